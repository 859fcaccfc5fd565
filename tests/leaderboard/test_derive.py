"""Map derivation: eq. 4 cells, eq. 5 routes, eq. 8 fallback, ties, incomplete builds, diffs."""

from __future__ import annotations

import re

import pytest

from core.schemas import UNKNOWN
from core.task_map import MapError, TaskMap
from leaderboard.derive import ScoreMatrix, averages, derive_map, diff_maps, map_version, matrix_from_rows


def _m(scores: dict, tasks=None, experts=None, n: int = 10) -> ScoreMatrix:
    tasks = tasks or list(scores)
    experts = experts or sorted({e for cell in scores.values() for e in cell})
    counts = {t: {e: n for e in cell} for t, cell in scores.items()}
    return ScoreMatrix(tasks=tasks, experts=experts, scores=scores, counts=counts,
                       expected={t: n for t in scores})


def test_matrix_from_rows_is_mean_per_cell():
    rows = [{"task": "net", "expert": "a", "score": s} for s in (1, 0, 1, 1)] + \
           [{"task": "net", "expert": "b", "score": s} for s in (0, 0, 1, 0)] + \
           [{"task": "db", "expert": "a", "score": 0.25}, {"task": "ghost", "expert": "a", "score": 1}]
    m = matrix_from_rows(rows, ["net", "db"], ["a", "b"], expected={"net": 4, "db": 1})
    assert m.scores == {"net": {"a": 0.75, "b": 0.25}, "db": {"a": 0.25}}
    assert m.counts["net"] == {"a": 4, "b": 4}
    assert m.missing() == [("db", "b", 0, 1)]


def test_argmax_per_task_and_best_average_fallback():
    # a: avg (0.9+0.2+0.4)/3 = 0.5; b: (0.3+0.8+0.5)/3 = 0.5333; c: (0.5+0.5+0.45)/3 = 0.4833
    m = _m({"net": {"a": 0.9, "b": 0.3, "c": 0.5},
            "db": {"a": 0.2, "b": 0.8, "c": 0.5},
            "k8s": {"a": 0.4, "b": 0.5, "c": 0.45}})
    tm = derive_map(m, version="v-test")
    assert tm.routes == {"net": "a", "db": "b", "k8s": "b"}
    assert tm.fallback == "b" and tm.route(UNKNOWN) == "b"
    assert tm.scores[UNKNOWN] == {"a": 0.5, "b": pytest.approx(0.5333), "c": pytest.approx(0.4833)}
    assert tm.scores["net"] == {"a": 0.9, "b": 0.3, "c": 0.5}
    assert tm.version == "v-test"
    tm.check(["net", "db", "k8s"], ["a", "b", "c"])  # a valid, servable map


def test_ties_break_on_average_then_name():
    # net is a tie between a and b (0.5): b has the higher average -> b
    # db is a tie between a and c (0.7) with equal averages -> name order -> a
    m = _m({"net": {"a": 0.5, "b": 0.5, "c": 0.1},
            "db": {"a": 0.7, "b": 0.6, "c": 0.7},
            "app": {"a": 0.2, "b": 0.3, "c": 0.6}})
    # averages: a 0.4667, b 0.4667, c 0.4667 (all equal) -> fallback by name: a
    avg = averages(m)
    assert avg["a"] == pytest.approx(avg["b"]) == pytest.approx(avg["c"])
    tm = derive_map(m)
    assert tm.fallback == "a"
    assert tm.routes["db"] == "a" and tm.routes["app"] == "c"
    # make b's average strictly higher: the net tie now goes to b
    m.scores["app"]["b"] = 0.31
    assert derive_map(m).routes["net"] == "b"


def test_float_noise_is_a_tie():
    m = _m({"t": {"b": 0.1 + 0.2, "a": 0.3}})  # 0.30000000000000004 vs 0.3
    assert derive_map(m).routes["t"] == "a"


def test_tasks_without_items_go_to_fallback():
    m = _m({"net": {"a": 0.9, "b": 0.1}}, tasks=["net", "hr"])
    tm = derive_map(m)
    assert tm.routes == {"net": "a", "hr": "a"} and "hr" not in tm.scores


def test_incomplete_matrix_is_refused_unless_allowed():
    m = _m({"net": {"a": 0.9, "b": 0.5}})
    m.counts["net"]["b"] = 7  # b has 7 of 10 items
    with pytest.raises(MapError, match=r"b on net \(7/10\)"):
        derive_map(m)
    assert derive_map(m, allow_incomplete=True).routes["net"] == "a"
    with pytest.raises(MapError):
        derive_map(ScoreMatrix(tasks=["t"], experts=[], scores={}))


def test_version_string_and_content_hash():
    v = map_version({"t": "a"}, "a", {"t": {"a": 1.0}})
    assert re.fullmatch(r"lb-\d{8}T\d{6}-[0-9a-f]{6}", v)
    assert v[-6:] == map_version({"t": "a"}, "a", {"t": {"a": 1.0}})[-6:]
    assert v[-6:] != map_version({"t": "b"}, "a", {"t": {"a": 1.0}})[-6:]


def test_diff_maps():
    old = TaskMap(version="v1", routes={"net": "a", "db": "a", "old": "a"}, fallback="a",
                  scores={"net": {"a": 0.5}})
    new = TaskMap(version="v2", routes={"net": "a", "db": "b", "k8s": "b"}, fallback="b",
                  scores={"net": {"a": 0.5, "b": 0.6}})
    d = diff_maps(old, new)
    assert d.changed == {"db": ("a", "b")} and d.added == {"k8s": "b"} and d.removed == {"old": "a"}
    assert d.fallback == ("a", "b") and d.new_experts == ["b"] and d.routing_changed
    text = "\n".join(d.lines())
    assert "~ db: a -> b" in text and "+ k8s: b" in text and "- old: a" in text and "unknown (fallback): a -> b" in text
    same = diff_maps(new, new)
    assert not same.routing_changed and "routing unchanged" in same.lines()[-1]
    first = diff_maps(None, new)
    assert first.added == new.routes and first.old_version is None


def test_unknown_takes_the_micro_average_over_items_not_the_mean_of_tasks():
    # net has 8 items, db 2. a: net 0.5, db 1.0 -> micro (4 + 2) / 10 = 0.6, macro 0.75
    #                        b: net 0.7, db 0.6 -> micro (5.6 + 1.2) / 10 = 0.68, macro 0.65
    rows = ([{"task": "net", "expert": "a", "score": s} for s in (1, 0) * 4] +
            [{"task": "db", "expert": "a", "score": 1.0}] * 2 +
            [{"task": "net", "expert": "b", "score": s} for s in (1, 1, 1, 1, 1, 0.6, 0, 0)] +
            [{"task": "db", "expert": "b", "score": s} for s in (0.2, 1.0)])
    m = matrix_from_rows(rows, ["net", "db"], ["a", "b"])
    assert averages(m) == {"a": pytest.approx(0.6), "b": pytest.approx(0.68)}
    assert averages(m, "macro") == {"a": pytest.approx(0.75), "b": pytest.approx(0.65)}
    tm = derive_map(m)
    assert tm.fallback == "b"  # the macro mean would have chosen a
    assert tm.scores[UNKNOWN] == {"a": 0.6, "b": 0.68}


def test_micro_average_refuses_cells_without_item_counts():
    m = ScoreMatrix(tasks=["net"], experts=["a"], scores={"net": {"a": 0.5}})
    with pytest.raises(ValueError, match="needs counts"):
        averages(m)
    assert averages(m, "macro") == {"a": 0.5}
