"""The transformers engine on the real embedded models: its fast paths must equal plain forwards."""

import pytest
import torch

from experts.engines.base import SamplingParams

pytestmark = pytest.mark.model  # every test here runs real weights


def _reference_ll(engine, context, continuation):
    ids = engine._encode_prompt(context + continuation)
    n = len(engine._encode_prompt(context))
    # Only the continuation's positions: a full-vocabulary log-softmax over every position of a long
    # prompt (Gemma's vocabulary is 262k) costs far more than the forward itself.
    with torch.no_grad():
        logits = engine.model(torch.tensor([ids]), logits_to_keep=len(ids) - n + 1).logits[0, :-1]
    lp = torch.log_softmax(logits.float(), -1)
    return sum(lp[j, ids[n + j]].item() for j in range(len(ids) - n))


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
    # Cold again (what benchmarks start from): the same answer without any cached prefix.
    smollm2.clear_prefix_cache()
    assert not smollm2._lru
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


def test_static_cache_generates_the_same_tokens_as_plain_generate(smollm2, caplog):
    """The preallocated cache (greedy and shared-prefill best-of-N) must not change what is generated:
    reference = transformers' own generate with its default DynamicCache, same seed."""
    prompts = [smollm2.format_prompt("You are helpful.", "Steps to restart a web server, numbered.", "1."),
               smollm2.format_prompt("You are helpful.", "Why is my disk full?", "1.")]
    tok = smollm2.tokenizer
    enc = [smollm2._encode_prompt(p) for p in prompts]
    width = max(len(e) for e in enc)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])

    def reference(**kw):
        with torch.inference_mode():
            out = smollm2.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20,
                                         pad_token_id=tok.pad_token_id, **kw)
        rows = [[t for t in r if t != tok.pad_token_id] for r in out[:, width:].tolist()]
        return [r[: r.index(tok.eos_token_id)] if tok.eos_token_id in r else r for r in rows]

    greedy = smollm2.generate(prompts, SamplingParams(max_new_tokens=20))
    want = reference(do_sample=False, temperature=None, top_p=None, top_k=None)
    assert [g.texts[0] for g in greedy] == [tok.decode(r, skip_special_tokens=True) for r in want]

    with caplog.at_level("WARNING", logger="experts.engines.transformers_engine"):
        sampled = smollm2.generate(prompts, SamplingParams(n=3, temperature=0.8, max_new_tokens=20, seed=3))
    assert "shared prefill unavailable" not in caplog.text  # the fast path ran, not the fallback
    torch.manual_seed(3)
    want = reference(do_sample=True, temperature=0.8, top_p=1.0, num_return_sequences=3)
    got = [t for g in sampled for t in g.texts]
    assert got == [tok.decode(r, skip_special_tokens=True) for r in want]


def test_gemma_sliding_window_prefix_reuse_is_exact(gemma):
    """Gemma 3 mixes sliding-window layers; prompts longer than the window must still be exact."""
    long = _long_context("incident log") * 3
    assert gemma.count_tokens(long) > 600
    reqs = [(long + " Question A", " yes"), (long + " Question B", " no")]
    assert gemma.loglikelihood(reqs) == pytest.approx([_reference_ll(gemma, c, x) for c, x in reqs], abs=3e-3)
    text = gemma.format_prompt("System.", "Incident: disk full", "Steps:\n1.")
    assert text.startswith("System.") and text.endswith("Steps:\n1.")
