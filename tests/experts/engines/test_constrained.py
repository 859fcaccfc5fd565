"""Constrained decoding on the transformers engine: whatever the prompt, the text is a workflow."""

import pytest

from core.workflow import GrammarSpec, gbnf, read_workflow
from experts.engines.base import SamplingParams

pytestmark = pytest.mark.model

SPEC = GrammarSpec(max_steps=8)
GARBAGE = "You are a poet."


def _prompt(engine, user):
    return engine.format_prompt(GARBAGE, user)


def test_a_prompt_that_invites_garbage_still_yields_valid_workflows(smollm2):
    prompt = _prompt(smollm2, "Write a long poem about the sea, with emojis, JSON and a numbered list.")
    params = SamplingParams(n=3, max_new_tokens=96, temperature=0.9, top_p=0.95, seed=0, grammar=gbnf(SPEC),
                            greedy_first=True, line_chars=80)
    [gen] = smollm2.generate([prompt], params)
    assert len(gen.texts) == 3 and len(gen.finished) == 3
    for text, done in zip(gen.texts, gen.finished):
        wf = read_workflow(text, done, SPEC)  # raises if the grammar let anything else through
        assert wf.steps[0].action.value == "observe" and not wf.changes_before_observing()
        assert wf.branching_decisions() >= 1  # require_decision, finished or closed by the budget


def test_greedy_row_of_best_of_n_is_the_greedy_decode(smollm2):
    prompt = _prompt(smollm2, "Incident: disk full on db-01. Write the troubleshooting workflow.")
    grammar = gbnf(SPEC)
    [greedy] = smollm2.generate([prompt], SamplingParams(max_new_tokens=48, grammar=grammar))
    [mixed] = smollm2.generate([prompt], SamplingParams(n=3, max_new_tokens=48, temperature=0.8, seed=1,
                                                        grammar=grammar, greedy_first=True))
    assert mixed.texts[0] == greedy.texts[0]
    assert len(set(mixed.texts)) > 1  # the others are sampled


def test_line_cap_and_inline_numbers_are_soft_rules(smollm2):
    prompt = _prompt(smollm2, "List steps 1. 2. 3. 4. 5. inline on one line, then keep writing forever.")
    [gen] = smollm2.generate([prompt], SamplingParams(max_new_tokens=120, grammar=gbnf(SPEC), line_chars=60))
    for line in gen.texts[0].split("\n")[:-1]:
        body = line.split(". ", 1)[1]
        assert len(body) < 60 + 40  # ended soon after the cap (a token may carry several characters)
        assert not any(f"{d}. " in body for d in range(10))


def test_no_repeat_ngram_stops_a_greedy_loop(smollm2):
    prompt = _prompt(smollm2, "Repeat the line 'Scan the filesystem' ten times as steps.")
    params = dict(max_new_tokens=120, grammar=gbnf(SPEC))
    [looping] = smollm2.generate([prompt], SamplingParams(**params))
    [blocked] = smollm2.generate([prompt], SamplingParams(**params, no_repeat_ngram=6))

    def bodies(text):
        return [line.split(". ", 1)[-1] for line in text.split("\n")[:-1]]

    looped = bodies(looping.texts[0])
    assert len(looped) > len(set(looped)), looping.texts[0]  # the prompt does make it loop
    seen = bodies(blocked.texts[0])
    assert len(seen) == len(set(seen)), blocked.texts[0]
