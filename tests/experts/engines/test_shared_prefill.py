"""Best-of-N sampling prefills each prompt once (TransformersEngine._generate_shared_prefill) and still
samples from the same distribution: at a near-zero temperature every sample equals the greedy text,
for left-padded batches and for Gemma 3's sliding-window layers past the window."""

import pytest

from experts.engines.base import SamplingParams

COLD = 1e-4  # sampling this cold is greedy, so shared-prefill samples must match greedy decoding

pytestmark = pytest.mark.model  # every test here runs real weights


def _greedy_and_cold(engine, prompts, tokens=20):
    greedy = engine.generate(prompts, SamplingParams(max_new_tokens=tokens))
    cold = engine.generate(prompts, SamplingParams(n=3, temperature=COLD, max_new_tokens=tokens, seed=1))
    return greedy, cold


def test_shared_prefill_matches_greedy_on_a_left_padded_batch(smollm2):
    short = smollm2.format_prompt("You are helpful.", "Name one colour.", "")
    long = smollm2.format_prompt("You are a senior SRE.", "Disk 97% full on db-01; postgres cannot write WAL. "
                                 "What do you check first? Answer in one line.", "")
    greedy, cold = _greedy_and_cold(smollm2, [short, long])
    for g, c in zip(greedy, cold):
        assert len(c.texts) == 3 and set(c.texts) == {g.texts[0]}


@pytest.mark.slow
def test_shared_prefill_on_gemma_past_its_sliding_window(gemma):
    window = gemma.model.config.sliding_window
    context = " ".join(f"line {i}: disk usage on db-{i % 7} reached {60 + i % 40}%." for i in range(120))
    prompt = gemma.format_prompt("Incident log.", context, "Steps:\n1.")
    assert gemma.count_tokens(prompt) > window
    greedy, cold = _greedy_and_cold(gemma, [prompt], tokens=12)
    assert set(cold[0].texts) == {greedy[0].texts[0]}
