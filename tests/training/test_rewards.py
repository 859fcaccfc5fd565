"""Reward functions for Planner RL: graded, trl-shaped, read with the serving parser."""

from __future__ import annotations

import pytest

from core.workflow import GrammarSpec, WorkflowError, read_workflow
from experts.scorer import LABELS, Scorer
from training.rewards import ScorerReward, completion_text, completion_workflow, format_score, make_format_reward

GOOD = ("1. Check the disk usage with df -h\n2. Is the log volume the full one? yes 4, no 3\n"
        "3. [end] Escalate to the storage team\n4. [change] Rotate the largest log files\n"
        "5. [change] Delete old container images\n6. Verify that usage dropped below 80%\n7. [end] Resolved")
STRAIGHT = "1. Check the disk usage with df -h\n2. [change] Delete old images\n3. [end] Done"


def test_completion_text_reads_strings_and_messages():
    assert completion_text(GOOD + "\n") == GOOD
    assert completion_text([{"role": "assistant", "content": "1. A b"}]) == "1. A b"


def test_format_reward_is_graded_not_binary():
    prose = format_score("The disk is a storage device. It stores data.")
    half = format_score("1. Check the disk usage with df -h\n2. Look at the logs\nand then some prose")
    straight, good = format_score(STRAIGHT), format_score(GOOD)
    assert prose == 0.0 and 0 < half < 0.3
    assert 0.4 < straight < good
    assert good == pytest.approx(1.0)
    # A cut-off text is closed the way serving closes it: still a workflow, but without its branches' ends.
    assert format_score(GOOD[:-20], truncated=True) < good


def test_format_reward_trl_signature_and_truncation_from_ids():
    fn = make_format_reward(max_tokens=4)
    out = fn(prompts=["p", "p"], completions=[GOOD, GOOD], completion_ids=[[1, 2], [1, 2, 3, 4]])
    assert out[0] >= out[1]
    assert fn.__name__ == "workflow_format_reward"


def test_completion_workflow_is_what_serving_keeps():
    spec = GrammarSpec()
    wf = completion_workflow(GOOD, spec=spec)
    assert wf == read_workflow(GOOD, True, spec)
    assert completion_workflow("just prose without a list") is None
    with pytest.raises(WorkflowError):
        read_workflow("just prose", True, spec)


def test_scorer_reward_maps_scores_to_unit_interval(fake_engine_cls):
    # A judge that answers 5 for workflows mentioning df, else 2.
    def label_fn(prompt, labels):
        top = " 5" if "df -h" in prompt.split("Proposed workflow")[-1] else " 2"
        return {lab: (1.0 if lab == top else 0.0) for lab in labels}

    scorer = Scorer(fake_engine_cls(label_fn=label_fn), ["relevance", "coverage", "accuracy", "coherence",
                                                         "conciseness"], structure_weight=0.0, grounding_weight=0.0)
    reward = ScorerReward(scorer)
    other = "1. Restart the database\n2. Check the replication lag\n3. [end] Done"
    out = reward(prompts=["p"] * 3, completions=[GOOD, other, "no list at all"], ticket=["disk full"] * 3)
    assert out == [pytest.approx(1.0), pytest.approx(0.25), 0.0]
    assert reward.__name__ == "scorer_reward"
    with pytest.raises(ValueError, match="ticket"):
        reward(prompts=["p"], completions=[GOOD])
    assert LABELS == [" 1", " 2", " 3", " 4", " 5"]
