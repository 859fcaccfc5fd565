"""Judge a Locust run against an SLO file; exit 1 when any objective is missed.

    python -m load_tests.verdict runs/storm_stats.csv load_tests/slo/storm.yaml

The SLO file (see load_tests/slo/*.yaml) lists objectives per Locust entry name:
    endpoints:
      "POST /v1/tickets (storm)":
        p50_ms: 2000         # Locust's "50%" column (ms); likewise p95_ms, p99_ms
        max_error_rate: 0.01 # failures / requests
        min_requests: 20     # the run must have exercised it
        max_reject_share: 0.2  # clean 429/503 refusals, counted by the Locust files as "<name> [rejected]",
                               # divided by all attempts (accepted + rejected)
    max_total_error_rate: 0.01  # over every entry, optional
    ratios:                     # one entry's statistic against another's, from the same run
      - name: critical p95 / idle p50
        numerator: {entry: "POST /v1/tickets (mixed critical)", stat: p95_ms}
        denominator: {entry: "idle single ticket", stat: p50_ms}
        max: 2.0
A missing entry counts as zero requests. Percentiles and error rates of an entry cover accepted requests only.
A ratio whose entries have no requests fails (there is nothing to compare).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import yaml

REJECTED = " [rejected]"
PCTS = {"p50_ms": "50%", "p95_ms": "95%", "p99_ms": "99%"}


def read_stats(path: str | Path) -> dict[str, dict]:
    """Locust `<prefix>_stats.csv` rows by Name (the Aggregated row under its own name)."""
    out = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            out[row["Name"]] = row
    return out


def _num(row: dict | None, col: str) -> float:
    if not row:
        return 0.0
    v = row.get(col, "")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")  # "N/A" when there were no requests


def judge(stats: dict[str, dict], slo: dict) -> list[tuple[bool, str]]:
    """[(passed, line)] for every objective in the SLO."""
    lines: list[tuple[bool, str]] = []
    for name, obj in (slo.get("endpoints") or {}).items():
        row = stats.get(name)
        n = _num(row, "Request Count")
        fails = _num(row, "Failure Count")
        rejected = _num(stats.get(name + REJECTED), "Request Count")
        for key, col in PCTS.items():
            if key in obj:
                v = _num(row, col)
                ok = n > 0 and v <= obj[key]
                lines.append((ok, f"{name}: {key[:-3]} {v:.0f} ms <= {obj[key]} ms" if n else
                              f"{name}: {key[:-3]} (no requests) <= {obj[key]} ms"))
        if "max_error_rate" in obj:
            rate = fails / n if n else 0.0
            lines.append((rate <= obj["max_error_rate"],
                          f"{name}: error rate {rate:.3f} ({fails:.0f}/{n:.0f}) <= {obj['max_error_rate']}"))
        if "min_requests" in obj:
            lines.append((n >= obj["min_requests"], f"{name}: requests {n:.0f} >= {obj['min_requests']}"))
        if "max_reject_share" in obj:
            share = rejected / (n + rejected) if (n + rejected) else 0.0
            lines.append((share <= obj["max_reject_share"],
                          f"{name}: rejected share {share:.3f} ({rejected:.0f}) <= {obj['max_reject_share']}"))
    if "max_total_error_rate" in slo:
        agg = stats.get("Aggregated")
        n, fails = _num(agg, "Request Count"), _num(agg, "Failure Count")
        rate = fails / n if n else 0.0
        lines.append((rate <= slo["max_total_error_rate"],
                      f"all requests: error rate {rate:.3f} ({fails:.0f}/{n:.0f}) <= {slo['max_total_error_rate']}"))
    for r in slo.get("ratios") or []:
        lines.append(judge_ratio(stats, r))
    return lines


def _stat(stats: dict[str, dict], ref: dict) -> tuple[float, float]:
    """(value, requests) of `{entry, stat}`; stat is p50_ms/p95_ms/p99_ms."""
    row = stats.get(ref["entry"])
    return _num(row, PCTS[ref["stat"]]), _num(row, "Request Count")


def judge_ratio(stats: dict[str, dict], r: dict) -> tuple[bool, str]:
    """numerator / denominator <= max, each side a percentile of one entry."""
    num, n_num = _stat(stats, r["numerator"])
    den, n_den = _stat(stats, r["denominator"])
    name = r.get("name") or f"{r['numerator']['entry']} / {r['denominator']['entry']}"
    if not n_num or not n_den or not den > 0:
        return False, f"{name}: no data ({n_num:.0f} and {n_den:.0f} requests) <= {r['max']}"
    ratio = num / den
    return ratio <= r["max"], (f"{name}: {num:.0f} ms / {den:.0f} ms = ratio {ratio:.2f} <= {r['max']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stats_csv", help="Locust --csv prefix + _stats.csv")
    ap.add_argument("slo", help="SLO YAML file")
    args = ap.parse_args(argv)
    slo = yaml.safe_load(Path(args.slo).read_text())
    stats = read_stats(args.stats_csv)
    lines = judge(stats, slo)
    print(f"SLO {slo.get('name', args.slo)} on {args.stats_csv}:")
    for ok, line in lines:
        print(f"  {'PASS' if ok else 'FAIL'}  {line}")
    missed = sum(1 for ok, _ in lines if not ok)
    print(f"verdict: {'PASS' if not missed else f'FAIL ({missed} objective(s) missed)'}")
    return 1 if missed or not lines else 0


if __name__ == "__main__":
    sys.exit(main())
