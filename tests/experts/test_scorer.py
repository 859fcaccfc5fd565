import pytest

from core.schemas import Scores, ScoringContext
from core.workflow import linear_workflow, parse_lines
from experts.scorer import LABELS, Scorer, best_index, structure_score

WF = linear_workflow(["Check usage with df -h", "Rotate logs"])


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
    assert best_index([Scores(overall=3.0, rank=3.0), Scores(overall=4.0, rank=4.0),
                       Scores(overall=4.0, rank=4.0)]) == 1


def test_scorer_prompt_carries_the_knowledge(fake_engine_cls):
    engine = fake_engine_cls()
    ctx = ScoringContext(text="Incident: Filesystem full\nReference workflow:\n1. Check df -h", reference_steps=[])
    Scorer(engine, ["relevance"]).score([("disk full", WF, ctx)])
    [prompt] = engine.calls[0][1][0]
    assert "Reference knowledge:\nIncident: Filesystem full" in prompt
    assert prompt.index("Reference knowledge") < prompt.index("Ticket: disk full") < prompt.index("Proposed workflow")
    Scorer(engine, ["relevance"]).score([("disk full", WF)])
    assert "none matched" in engine.calls[1][1][0][0]


def test_structure_and_grounding_decide_between_equal_judgments(fake_engine_cls):
    branching = parse_lines("1. Check usage with df -h\n2. Is it the log volume? yes 4, no 3\n3. [end] Escalate\n"
                            "4. [change] Rotate logs\n5. [end] Resolved")
    straight = linear_workflow(["Check the weather", "Water the plants"])
    assert structure_score(branching) == pytest.approx(1.0)
    assert structure_score(straight) == pytest.approx(0.6)
    ctx = ScoringContext(text="x", reference_steps=["Check usage with df -h", "Rotate logs"])
    scores = Scorer(fake_engine_cls(), ["relevance"]).score([("disk full", straight, ctx), ("disk full", branching, ctx)])
    assert scores[0].overall == scores[1].overall  # the fake judge cannot tell them apart
    assert scores[1].grounding > scores[0].grounding
    assert best_index(scores) == 1


def test_real_scorer_is_a_distribution(smollm2):
    [s] = Scorer(smollm2, ["relevance", "conciseness"]).score([("disk full on db-01", WF)])
    assert 1 <= s.relevance <= 5 and 1 <= s.conciseness <= 5
