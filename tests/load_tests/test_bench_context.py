"""The context-length benchmark's arithmetic: settings parsing, the paired difference and the knee."""

import pytest

from load_tests.bench_context import knee, paired_difference, parse_contexts, report


def test_contexts_parse_and_bad_ones_are_refused_with_the_reason():
    assert parse_contexts("0:1, 1:2,3:2") == [(0, 1), (1, 2), (3, 2)]
    for bad, reason in [("1-2", "CHUNKS:NODES"), ("a:1", "CHUNKS:NODES"), ("0:0", "no knowledge"), ("", "empty")]:
        with pytest.raises(ValueError, match=reason):
            parse_contexts(bad)


def test_paired_difference_and_its_standard_error():
    mean, se = paired_difference([60, 70, 80], [50, 70, 90])
    assert mean == 0 and se == pytest.approx(5.7735, rel=1e-3)
    assert paired_difference([10], [4]) == (6, 0.0)


def _summary(setting, tokens, f1s):
    return {"setting": setting, "cases": len(f1s), "f1": sum(f1s) / len(f1s), "prompt_tokens_mean": tokens,
            "plan_p50_s": 1.0, "branching_rate": 100.0, "unparseable_rate": 0.0, "none_matched_rate": 0.0,
            "own_runbook_shown_rate": 100.0, "errors": 0, "per_case": [{"f1": f} for f in f1s]}


def test_the_knee_is_the_shortest_context_within_tolerance_of_the_largest():
    rows = report([_summary("3:2", 1000, [80, 80]), _summary("0:1", 300, [60, 62]),
                   _summary("1:1", 500, [79, 80])], tolerance=2)
    assert [r["context"] for r in rows] == ["0:1", "1:1", "3:2"]  # by prompt length
    assert rows[1]["diff_vs_largest"] == -0.5
    assert knee(rows, 2)["context"] == "1:1"
    assert knee(rows, 0.1)["context"] == "3:2"  # nothing shorter is close enough: keep the largest
    assert knee(rows, 30)["context"] == "0:1"
