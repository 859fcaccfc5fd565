"""The transformers engine on the real embedded models: its fast paths must equal plain forwards."""

import pytest
import torch

from experts.engines.base import SamplingParams


def _reference_ll(engine, context, continuation):
    ids = engine._encode_prompt(context + continuation)
    n = len(engine._encode_prompt(context))
    with torch.no_grad():
        lp = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0].float(), -1)
    return sum(lp[k - 1, ids[k]].item() for k in range(n, len(ids)))


def _long_context(tag):
    return f"{tag}: " + " ".join(f"host{i} reported disk errors at {i}:00;" for i in range(40))


def test_loglikelihood_matches_plain_forward_with_shared_prefixes(smollm2):
    ctx = [smollm2.format_prompt("Rate.", _long_context("report") + f" Question {q}", "Score:")
           for q in ("relevance", "coverage", "accuracy")]
    reqs = [(ctx[0], " 3"), (ctx[1], " 4"), (ctx[2], " 5"), ("The sky is", " blue")]
    got = smollm2.loglikelihood(reqs)
    want = [_reference_ll(smollm2, c, x) for c, x in reqs]
    assert got == pytest.approx(want, abs=2e-3)
    # A second call reuses cached prefixes (including a cropped one) and must agree.
    other = smollm2.format_prompt("Rate.", _long_context("report") + " Question conciseness", "Score:")
    assert smollm2.loglikelihood([(other, " 2")]) == pytest.approx([_reference_ll(smollm2, other, " 2")], abs=2e-3)


def test_label_probs(smollm2):
    [dist] = smollm2.label_probs(["The capital of France is"], [" Paris", " London", " Berlin"])
    assert sum(dist.values()) == pytest.approx(1.0)
    assert max(dist, key=dist.get) == " Paris"
    scores = smollm2.label_probs([smollm2.format_prompt("Rate 1-5.", "Good answer?", "Score:")] * 2,
                                 [" 1", " 2", " 3", " 4", " 5"])
    assert scores[0] == pytest.approx(scores[1])
    with pytest.raises(ValueError):
        smollm2.label_probs(["x"], [])


def test_generate_n_samples_stop_and_seed(smollm2):
    prompt = smollm2.format_prompt("You are helpful.", "List three colours, numbered.", "1.")
    p = SamplingParams(n=3, temperature=0.9, max_new_tokens=24, seed=7, stop=("\n3.",))
    a = smollm2.generate([prompt, prompt], p)
    b = smollm2.generate([prompt, prompt], p)
    assert len(a) == 2 and all(len(g.texts) == 3 for g in a)
    assert [g.texts for g in a] == [g.texts for g in b]
    assert all("\n3." not in t for g in a for t in g.texts)
    greedy = smollm2.generate([prompt], SamplingParams(max_new_tokens=8))
    assert greedy[0].tokens[0] <= 8
    with pytest.raises(ValueError):
        SamplingParams(n=2, temperature=0)


def test_gemma_sliding_window_prefix_reuse_is_exact():
    """Gemma 3 mixes sliding-window layers; prompts longer than the window must still be exact."""
    from experts.engines.transformers_engine import TransformersEngine
    from experts.engines.weights import resolve_weights

    gemma = TransformersEngine(resolve_weights("gemma3-270m"), chat=False, threads=1)
    long = _long_context("incident log") * 3
    assert gemma.count_tokens(long) > 600
    reqs = [(long + " Question A", " yes"), (long + " Question B", " no")]
    assert gemma.loglikelihood(reqs) == pytest.approx([_reference_ll(gemma, c, x) for c, x in reqs], abs=3e-3)
    text = gemma.format_prompt("System.", "Incident: disk full", "Steps:\n1.")
    assert text.startswith("System.") and text.endswith("Steps:\n1.")
