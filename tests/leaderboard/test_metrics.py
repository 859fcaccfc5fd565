"""Leaderboard metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leaderboard.metrics import (
    choose_letters,
    classification_report,
    cosine_scores,
    letters_of,
    mc_accuracy,
    mc_correct,
    parse_mc_output,
    workflow_scores,
)


# ---- multiple choice -------------------------------------------------------------------------
def test_mc_exact_set_match():
    assert mc_correct("B", "B") and mc_correct(["D", "C", "F"], "C,D,F") and mc_correct("c, d", "CD")
    assert not mc_correct("C,D", "C,D,F")  # a missing option is wrong
    assert not mc_correct("C,D,F,A", "C,D,F")  # an extra option is wrong
    assert not mc_correct("", "A") and not mc_correct("A", "")
    assert letters_of("C, A") == ("A", "C")


def test_mc_accuracy_hand_computed():
    pred = ["A", "B", "C,D", "A,B", "D"]
    gold = ["A", "C", "C,D", "A,B,C", "D"]
    assert mc_accuracy(pred, gold) == pytest.approx(3 / 5)
    assert mc_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        mc_accuracy(["A"], [])


def test_choose_letters_single_and_multi():
    p = {"A": 0.1, "B": 0.4, "C": 0.3, "D": 0.2}
    assert choose_letters(p, multi=False) == ["B"]
    assert choose_letters(p, multi=True, n_stated=2) == ["B", "C"]
    # relative threshold 0.5 x 0.4 = 0.2: B, C and D (0.2 >= 0.2) qualify, A does not
    assert choose_letters(p, multi=True) == ["B", "C", "D"]
    assert choose_letters(p, multi=True, threshold=0.9) == ["B"]
    assert choose_letters({"A": 0.5, "B": 0.5}, multi=False) == ["A"]  # tie: earlier letter
    assert choose_letters({}, multi=False) == []


@pytest.mark.parametrize("text,expected", [
    ("B", ["B"]),
    (" (C) because the MTU is wrong", ["C"]),
    ("Answer: D", ["D"]),
    ("The answers are A and C.", ["A", "C"]),
    ("答案：AC", ["A", "C"]),
    ("A, D", ["A", "D"]),
    ("I think the correct option is B", ["B"]),
    ("A server restart fixes it; option C", ["C"]),
    ("It must be E", []),  # not an option letter here
    ("", []),
])
def test_parse_mc_output(text, expected):
    assert parse_mc_output(text, "ABCD") == expected


# ---- free text -------------------------------------------------------------------------------
def _fake_encode(texts):
    table = {"a": [1.0, 0.0], "b": [0.0, 1.0], "ab": [1.0, 1.0], "neg": [-1.0, 0.0], "": [1.0, 0.0]}
    return np.array([table[t] for t in texts], dtype=np.float32)


def test_cosine_scores_hand_computed():
    # cos(a, a) = 1; cos(a, b) = 0; cos(ab, a) = 1/sqrt(2); cos(neg, a) = -1 -> clipped to 0; empty -> 0
    got = cosine_scores(["a", "a", "ab", "neg", ""], ["a", "b", "a", "a", "a"], encode=_fake_encode)
    assert got == pytest.approx([1.0, 0.0, 1 / math.sqrt(2), 0.0, 0.0])
    with pytest.raises(ValueError):
        cosine_scores(["a"], [], encode=_fake_encode)


# ---- workflows -------------------------------------------------------------------------------
def test_workflow_scores_calls_stepscore(monkeypatch):
    calls = []

    class S:  # STEPScore reports 0-100
        precision, recall, f1 = 50.0, 100.0, 200 / 3

    monkeypatch.setattr("leaderboard.metrics.step_score", lambda gen, ref: calls.append((gen, ref)) or S())
    s = workflow_scores(["check disk", "free space"], ["check disk"])
    assert (s.precision, s.recall, s.f1) == (0.5, 1.0, pytest.approx(2 / 3))
    assert calls == [(["check disk", "free space"], ["check disk"])]
    class Neg:
        precision, recall, f1 = -5.0, 120.0, 0.0

    monkeypatch.setattr("leaderboard.metrics.step_score", lambda gen, ref: Neg())
    assert (workflow_scores(["a"], ["b"]).precision, workflow_scores(["a"], ["b"]).recall) == (0.0, 1.0)  # clipped
    assert workflow_scores([], ["x"]).f1 == 0.0  # nothing generated: 0 without calling the scorer


# ---- classification --------------------------------------------------------------------------
def test_classification_report_hand_computed():
    y_true = ["net", "net", "net", "db", "db", "app"]
    y_pred = ["net", "db", "unknown", "db", "db", "net"]
    r = classification_report(y_true, y_pred, labels=["net", "db", "app"])
    assert r.columns == ["net", "db", "app", "unknown"]
    assert r.confusion == [[1, 1, 0, 1],
                           [0, 2, 0, 0],
                           [1, 0, 0, 0]]
    assert r.accuracy == pytest.approx(3 / 6)
    # net: P = 1/2, R = 1/3, F1 = 2*(1/6)/(5/6) = 0.4; db: P = 2/3, R = 1, F1 = 0.8; app: 0
    assert r.per_label["net"]["f1"] == pytest.approx(0.4)
    assert r.per_label["db"]["precision"] == pytest.approx(2 / 3) and r.per_label["db"]["f1"] == pytest.approx(0.8)
    assert r.per_label["app"]["f1"] == 0.0 and r.per_label["app"]["support"] == 1
    assert r.macro_f1 == pytest.approx((0.4 + 0.8 + 0.0) / 3)
    assert r.n == 6


def test_classification_report_defaults_and_errors():
    r = classification_report(["b", "a"], ["b", "a"])
    assert r.labels == ["a", "b"] and r.columns == ["a", "b"] and r.accuracy == 1.0 and r.macro_f1 == 1.0
    assert classification_report(["a"], ["zzz"], ["a"]).columns == ["a", "other"]
    with pytest.raises(ValueError):
        classification_report(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="not in labels"):
        classification_report(["c"], ["c"], labels=["a"])


def test_workflow_scores_with_the_real_stepscore():
    same = workflow_scores(["Check the disk usage on the node"], ["Check the disk usage on the node"])
    assert same.f1 == pytest.approx(1.0, abs=1e-4)
    other = workflow_scores(["Restart the payment service"], ["Check the disk usage on the node"])
    assert 0.0 <= other.f1 < 0.8
