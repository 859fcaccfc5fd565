"""The pure pieces of the Scorer prefix-sharing benchmark: how speed-ups and score differences are summarised."""

import pytest

from load_tests import bench_scorer


def test_summary_reports_total_ratio_and_per_ticket_spread():
    rows = [{"prompts": 20, "shared_s": 2.0, "scratch_s": 8.0, "max_score_diff": 0.01},
            {"prompts": 20, "shared_s": 1.0, "scratch_s": 2.0, "max_score_diff": 0.05}]
    s = bench_scorer.summarize(rows)
    assert s["tickets"] == 2 and s["prompts"] == 40
    assert s["speedup"] == pytest.approx(10 / 3, abs=0.01)  # total times, not the mean of ratios
    assert (s["ticket_speedup_min"], s["ticket_speedup_median"], s["ticket_speedup_max"]) == (2.0, 3.0, 4.0)
    assert s["max_score_diff"] == 0.05


def test_summary_of_nothing():
    s = bench_scorer.summarize([])
    assert s["tickets"] == 0 and s["speedup"] is None and s["ticket_speedup_median"] is None


def test_expectation_is_the_scorers_dimension_score():
    assert bench_scorer.expectation({" 1": 0.5, " 2": 0, " 3": 0, " 4": 0, " 5": 0.5}) == pytest.approx(3.0)
