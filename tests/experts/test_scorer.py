import pytest

from core.workflow import workflow_from_steps
from experts.scorer import LABELS, Scorer, best_index
from core.schemas import Scores

WF = workflow_from_steps(["Check usage with df -h", "Rotate logs"])


def test_expected_value_per_dimension(fake_engine_cls):
    def dist(prompt, labels):
        if "Relevance" in prompt:
            return {" 1": 0, " 2": 0, " 3": 0, " 4": 0, " 5": 1.0}
        return {lab: 0.2 for lab in labels}  # uniform: expected value 3

    engine = fake_engine_cls(label_fn=dist)
    [s] = Scorer(engine, ["relevance", "coverage"]).score([("disk full", WF)])
    assert s.relevance == 5 and s.coverage == pytest.approx(3) and s.overall == pytest.approx(4)
    assert s.accuracy is None
    prompts, labels = engine.calls[0][1]
    assert labels == LABELS and len(prompts) == 2
    # The dimension question comes last so the prompts share their prefix.
    assert prompts[0].split("Relevance")[0] == prompts[1].split("Coverage")[0]


def test_one_call_for_all_candidates(fake_engine_cls):
    engine = fake_engine_cls()
    out = Scorer(engine, ["relevance", "coverage", "accuracy", "coherence", "conciseness"]).score(
        [("t", WF)] * 3)
    assert len(out) == 3 and len(engine.calls) == 1 and len(engine.calls[0][1][0]) == 15


def test_best_index_ties_go_to_first():
    assert best_index([Scores(overall=3.0), Scores(overall=4.0), Scores(overall=4.0)]) == 1


def test_real_scorer_is_a_distribution(smollm2):
    [s] = Scorer(smollm2, ["relevance", "conciseness"]).score([("disk full on db-01", WF)])
    assert 1 <= s.relevance <= 5 and 1 <= s.conciseness <= 5
