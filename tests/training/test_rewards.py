"""Reward functions for Planner RL: graded, trl-shaped, and the Scorer as a reward model."""

from __future__ import annotations

import pytest

from experts.scorer import LABELS, Scorer
from training.rewards import ScorerReward, completion_text, completion_workflow, format_score, make_format_reward

GOOD = (" Check the disk usage with df -h\n2. Delete old container images\n3. Rotate the largest log files\n"
        "4. Verify that usage dropped below 80%")


def test_completion_text_reprefixes_and_cuts_at_stop_strings():
    assert completion_text(" Check X\n2. Fix Y\nTicket: another one").startswith("1. Check X")
    assert "another" not in completion_text(" Check X\n2. Fix Y\nTicket: another one")
    assert completion_text([{"role": "assistant", "content": " A b"}]) == "1. A b"


def test_format_reward_is_graded_not_binary():
    empty = format_score("1.")
    one = format_score("1. Check the disk usage")
    two = format_score("1. Check the disk usage\n2. Delete old images")
    four = format_score(completion_text(GOOD))
    ramble = format_score(completion_text(GOOD + "\nThe disk is a storage device.\nIt stores data.\nMore prose."))
    assert empty == 0.0 and one == pytest.approx(0.1)
    assert 0.4 < two < four <= 1.0
    assert four == pytest.approx(1.0)
    assert ramble < four  # text after the list costs
    # A cut-off last line is not a step: truncation lowers the count.
    assert format_score(completion_text(GOOD), truncated=True) < four
    long_step = "1. " + " ".join(["word"] * 40) + "\n2. Restart the service now"
    assert format_score(long_step) < format_score("1. Check the service logs\n2. Restart the service now")


def test_format_reward_trl_signature_and_truncation_from_ids():
    fn = make_format_reward(max_tokens=4)
    out = fn(prompts=["p", "p"], completions=[GOOD, GOOD], completion_ids=[[1, 2], [1, 2, 3, 4]])
    assert out[0] > out[1]  # the second hit the token limit: its last line is dropped
    assert fn.__name__ == "workflow_format_reward"


def test_completion_workflow_matches_the_serving_parser():
    wf = completion_workflow(GOOD)
    assert wf is not None and len(wf.action_steps()) == 4
    assert completion_workflow(" just prose without a list") is None


def test_scorer_reward_maps_expected_scores_to_unit_interval(fake_engine_cls):
    # A judge that answers 5 for workflows mentioning df, else 2.
    def label_fn(prompt, labels):
        top = " 5" if "df -h" in prompt else " 2"
        return {lab: (1.0 if lab == top else 0.0) for lab in labels}

    scorer = Scorer(fake_engine_cls(label_fn=label_fn), ["relevance", "coverage", "accuracy", "coherence",
                                                         "conciseness"])
    reward = ScorerReward(scorer)
    other = " Restart the database\n2. Check the replication lag"
    out = reward(prompts=["p"] * 3, completions=[GOOD, other, " no list at all"], ticket=["disk full"] * 3)
    assert out == [pytest.approx(1.0), pytest.approx(0.25), 0.0]
    assert reward.__name__ == "scorer_reward"
    with pytest.raises(ValueError, match="ticket"):
        reward(prompts=["p"], completions=[GOOD])
    assert LABELS == [" 1", " 2", " 3", " 4", " 5"]
