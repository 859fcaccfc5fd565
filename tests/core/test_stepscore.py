import numpy as np
import pytest

from core.stepscore import StepScore, step_score, step_scores, workflow_steps
from core.workflow import linear_workflow, to_mermaid


class FakeEmbedder:
    """Fixed vectors per step text, so the arithmetic can be checked by hand."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def test_two_by_three_by_hand():
    # generated g1, g2; reference r1, r2, r3 (unit vectors, so dot products are cosines)
    #        r1=(1,0,0)  r2=(.6,.8,0)  r3=(0,0,1)
    # g1=(1,0,0):  1.0       0.6          0.0      -> best 1.0
    # g2=(0,1,0):  0.0       0.8          0.0      -> best 0.8
    # precision = (1.0 + 0.8) / 2 = 0.9
    # recall: r1 best 1.0 (g1), r2 best 0.8 (g2), r3 best 0.0 -> (1.0 + 0.8 + 0.0) / 3 = 0.6
    # F1 = 2 * 0.9 * 0.6 / (0.9 + 0.6) = 1.08 / 1.5 = 0.72
    emb = FakeEmbedder({
        "Check the disk usage": [1, 0, 0], "Restart the service now": [0, 1, 0],
        "Check disk usage with df": [1, 0, 0], "Restart the service if stuck": [0.6, 0.8, 0],
        "Escalate to the storage team": [0, 0, 1],
    })
    s = step_score(["Check the disk usage", "Restart the service now"],
                   ["Check disk usage with df", "Restart the service if stuck", "Escalate to the storage team"],
                   embedder=emb)
    assert s.precision == pytest.approx(90.0, abs=1e-4)
    assert s.recall == pytest.approx(60.0, abs=1e-4)
    assert s.f1 == pytest.approx(72.0, abs=1e-4)
    assert (s.generated_steps, s.reference_steps) == (2, 3)


def test_vectors_are_normalised_before_cosine():
    emb = FakeEmbedder({"Alpha step one": [2, 0], "Beta step two": [0, 5], "Gamma step three": [3, 3]})
    s = step_score(["Alpha step one"], ["Beta step two", "Gamma step three"], embedder=emb)
    # cos(alpha, beta) = 0, cos(alpha, gamma) = 1/sqrt(2)
    assert s.precision == pytest.approx(100 / np.sqrt(2), abs=1e-4)
    assert s.recall == pytest.approx(100 * (0 + 1 / np.sqrt(2)) / 2, abs=1e-4)


def test_empty_generated_scores_zero_and_batch_embeds_once():
    emb = FakeEmbedder({"Check the logs": [1, 0], "Restart the pod": [0, 1]})
    assert step_score([], ["Check the logs"], embedder=emb) == StepScore(precision=0, recall=0, f1=0,
                                                                        generated_steps=0, reference_steps=1)
    assert step_score("", "1. Check the logs", embedder=emb).f1 == 0
    emb.calls.clear()
    out = step_scores([(["Check the logs"], ["Check the logs", "Restart the pod"]),
                       (["Restart the pod"], ["Restart the pod"]), (None, ["Check the logs"])], embedder=emb)
    assert len(emb.calls) == 1 and sorted(emb.calls[0]) == ["Check the logs", "Restart the pod"]
    assert [round(x.f1, 3) for x in out] == [round(2 * 100 * 50 / 150, 3), 100.0, 0.0]


def test_input_forms_parse_to_the_same_steps():
    steps = ["Check the disk usage with df -h", "Check whether the disk is more than 90% full", "Delete old log files"]
    mermaid = to_mermaid(linear_workflow(steps))
    numbered = ("Workflow:\n1. Check the disk usage with df -h\n2. Check whether the disk is more than 90% full\n"
                "3. Delete old log files")
    bullets = "- Check the disk usage with df -h\n- Check whether the disk is more than 90% full\n- Delete old log files"
    for form in (mermaid, numbered, bullets, steps, linear_workflow(steps)):
        assert workflow_steps(form) == steps  # terminals of the Mermaid chart are not steps
    assert workflow_steps(["Check the logs", "check the logs!"]) == ["Check the logs"]  # a set


def test_identical_workflows_score_100_with_minilm():
    steps = ["Check the pod events with kubectl describe pod", "Read the previous container logs",
             "Roll back the deployment"]
    s = step_score(to_mermaid(linear_workflow(steps)), steps)
    assert s.precision == pytest.approx(100, abs=1e-3) and s.recall == pytest.approx(100, abs=1e-3)
    assert s.f1 == pytest.approx(100, abs=1e-3)
    partial = step_score(steps[:1], steps)
    assert partial.precision == pytest.approx(100, abs=1e-3) and partial.recall < 80
