"""The SLO verdict on Locust CSVs, the SLO files themselves, and the load-test data patterns."""

import csv
from pathlib import Path

import pytest
import yaml

from deployments.coalesce import normalize
from load_tests import data, verdict

SLO_DIR = Path(__file__).resolve().parents[2] / "load_tests" / "slo"
HEADER = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
          "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s", "50%", "66%",
          "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]


def _csv(tmp_path, rows):
    path = tmp_path / "run_stats.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for name, n, fails, p50, p95, p99 in rows:
            w.writerow(["POST", name, n, fails, p50, p50, 1, p99, 10, 1, 0, p50, p50, p50, p50, p95, p95, p99, p99,
                        p99, p99, p99])
    return path


SLO = {"endpoints": {"POST /v1/tickets (storm)": {"p50_ms": 100, "p95_ms": 1000, "p99_ms": 5000,
                                                  "max_error_rate": 0.01, "min_requests": 10,
                                                  "max_reject_share": 0.2}},
       "max_total_error_rate": 0.01}


def test_verdict_passes_and_fails(tmp_path):
    good = _csv(tmp_path, [("POST /v1/tickets (storm)", 100, 0, 50, 900, 4000),
                           ("POST /v1/tickets (storm) [rejected]", 10, 0, 5, 5, 5), ("Aggregated", 110, 0, 40, 900, 4000)])
    assert all(ok for ok, _ in verdict.judge(verdict.read_stats(good), SLO))
    slo_file = tmp_path / "slo.yaml"
    slo_file.write_text(yaml.safe_dump(SLO))
    assert verdict.main([str(good), str(slo_file)]) == 0
    bad = _csv(tmp_path, [("POST /v1/tickets (storm)", 100, 5, 150, 900, 6000),
                          ("POST /v1/tickets (storm) [rejected]", 50, 0, 5, 5, 5), ("Aggregated", 150, 5, 40, 900, 6000)])
    failed = [line for ok, line in verdict.judge(verdict.read_stats(bad), SLO) if not ok]
    assert len(failed) == 5  # p50, p99, error rate, reject share, total error rate
    assert verdict.main([str(bad), str(slo_file)]) == 1


def test_missing_endpoint_fails(tmp_path):
    empty = _csv(tmp_path, [("Aggregated", 0, 0, 0, 0, 0)])
    assert verdict.main([str(empty), str(_write(tmp_path, SLO))]) == 1


def _write(tmp_path, slo):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(slo))
    return p


@pytest.mark.parametrize("name", ["storm.yaml", "flood.yaml", "mixed.yaml"])
def test_slo_files_are_complete(name):
    slo = yaml.safe_load((SLO_DIR / name).read_text())
    assert slo["rationale"].strip()
    for endpoint, obj in slo["endpoints"].items():
        assert {"p50_ms", "p95_ms", "p99_ms", "max_error_rate", "min_requests"} <= set(obj), endpoint


def test_loopback_only():
    data.require_loopback("http://127.0.0.1:8000")
    data.require_loopback("http://localhost:1234")
    with pytest.raises(SystemExit):
        data.require_loopback("http://10.0.0.5:8000")


@pytest.fixture(scope="module")
def rows():
    try:
        return data.load_rows(limit=3000)
    except data.DataUnavailable as exc:
        pytest.skip(str(exc))


def test_storm_near_duplicates_share_one_key(rows):
    import random

    rng = random.Random(1)
    incidents = data.storm_incidents(rows, k=3)
    assert len(set(incidents)) == 3
    for inc in incidents:
        variants = {normalize(data.near_duplicate(inc, rng)) for _ in range(30)}
        assert len(variants) == 1, "a storm's near-duplicates must coalesce"
    assert len({normalize(data.near_duplicate(i, rng)) for i in incidents}) == 3


def test_diverse_tickets_are_distinct_and_span_topics(rows):
    picked = data.diverse(rows, 24, seed=3)
    assert len(picked) == 24 and len({normalize(t) for t in picked}) >= 22
    topics = {r["topic"] for r in rows if r["text"] in set(picked)}
    assert len(topics) >= 6
    body = data.to_ticket(picked[0])
    assert 0 < len(body["title"]) <= 200 and len(body["description"]) <= 1500


RATIO_SLO = {"ratios": [{"name": "critical p95 / idle p50", "max": 2.0,
                         "numerator": {"entry": "POST /v1/tickets (mixed critical)", "stat": "p95_ms"},
                         "denominator": {"entry": "idle single ticket", "stat": "p50_ms"}}]}


def test_ratio_objective(tmp_path):
    ok = _csv(tmp_path, [("POST /v1/tickets (mixed critical)", 10, 0, 20000, 39000, 40000),
                         ("idle single ticket", 3, 0, 20000, 21000, 21000)])
    [(passed, line)] = verdict.judge(verdict.read_stats(ok), RATIO_SLO)
    assert passed and "ratio 1.95" in line
    bad = _csv(tmp_path, [("POST /v1/tickets (mixed critical)", 10, 0, 20000, 106000, 113000),
                          ("idle single ticket", 3, 0, 20000, 32000, 32000)])
    [(passed, line)] = verdict.judge(verdict.read_stats(bad), RATIO_SLO)
    assert not passed and "106000 ms / 20000 ms = ratio 5.30" in line
    assert verdict.main([str(bad), str(_write(tmp_path, RATIO_SLO))]) == 1


def test_ratio_without_data_fails(tmp_path):
    only_idle = _csv(tmp_path, [("idle single ticket", 3, 0, 20000, 21000, 21000)])
    [(passed, line)] = verdict.judge(verdict.read_stats(only_idle), RATIO_SLO)
    assert not passed and "no data" in line


def test_mixed_slo_judges_critical_tickets_on_their_own():
    slo = yaml.safe_load((SLO_DIR / "mixed.yaml").read_text())
    critical = slo["endpoints"]["POST /v1/tickets (mixed critical)"]
    assert critical["max_reject_share"] == 0.0 and critical["max_error_rate"] == 0.0
    [ratio] = slo["ratios"]
    assert ratio["max"] == 2.0 and ratio["numerator"]["stat"] == "p95_ms" and ratio["denominator"]["stat"] == "p50_ms"
    assert ratio["denominator"]["entry"] in slo["endpoints"] and ratio["numerator"]["entry"] in slo["endpoints"]


def test_run_times_the_mixed_pattern_itself():
    from load_tests.run import locust_run_time

    assert locust_run_time("storm", "60s") == ("60s", {})
    run_time, env = locust_run_time("mixed", "2m")
    assert env == {"FLOWROUTER_MIXED_FLOOD_S": "120"} and int(run_time[:-1]) > 120
