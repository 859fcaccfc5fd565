"""Latency of one ticket at a time, per stage, against a running service (HTTP only).

    python -m load_tests.bench_latency --url http://127.0.0.1:8000 --count 8 --candidates 4

Sends the starter pack's sample tickets one after another (no concurrency, cache bypassed where the
service supports it) and prints, per stage, the median and p90 of the service's own timings plus the
client-side end-to-end latency, and the share of end-to-end time spent outside the model stages.
It also says what came back: how many workflows have a decision with both branches, and how many
answers were grounded in matched knowledge.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

from core.workflow import Workflow

STARTER_TICKETS = Path(__file__).resolve().parents[1] / "starter" / "tickets.jsonl"
STAGES = ("classify", "retrieve", "plan", "score", "compute", "total")


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(url: str, count: int, candidates: int, tickets_file: Path, warmup: int = 1) -> dict:
    rows = [json.loads(x) for x in tickets_file.read_text().splitlines() if x.strip()]
    tickets = [{k: r[k] for k in ("title", "description") if k in r} for r in rows]
    timings: dict[str, list[float]] = {s: [] for s in STAGES}
    client: list[float] = []
    experts: dict[str, int] = {}
    branching = matched = 0
    key = os.environ.get("FLOWROUTER_API_KEY")  # for a service in `auth.mode: keys`
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=900, headers=headers) as http:
        for i in range(warmup + count):
            t = tickets[i % len(tickets)]
            t0 = time.perf_counter()
            r = http.post(f"{url}/v1/tickets", params={"candidates": candidates, "cache": "false"}, json=t)
            elapsed = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                raise SystemExit(f"ticket {i} failed: HTTP {r.status_code} {r.text[:200]}")
            if i < warmup:
                continue
            body = r.json()
            client.append(elapsed)
            experts[body["expert"]] = experts.get(body["expert"], 0) + 1
            branching += Workflow.model_validate({"steps": body["workflow"]["steps"]}).branching_decisions() >= 1
            matched += (body.get("knowledge") or {}).get("status") == "matched"
            for s in STAGES:
                if s in body["timings_ms"]:
                    timings[s].append(body["timings_ms"][s])
    model_ms = [c + p + s for c, p, s in zip(timings["classify"], timings["plan"], timings["score"])]
    return {
        "count": count, "candidates": candidates, "experts": experts, "branching": branching, "matched": matched,
        "stages": {s: {"p50_ms": round(statistics.median(v), 1), "p90_ms": round(_pct(v, 0.9), 1)}
                   for s, v in timings.items() if v},
        "client_p50_ms": round(statistics.median(client), 1),
        "client_p90_ms": round(_pct(client, 0.9), 1),
        "outside_stages_share": round(1 - sum(model_ms) / sum(client), 4),
    }


def render(result: dict) -> str:
    lines = ["| stage | p50 ms | p90 ms |", "|---|---|---|"]
    for s, v in result["stages"].items():
        lines.append(f"| {s} | {v['p50_ms']} | {v['p90_ms']} |")
    lines.append(f"| client end-to-end | {result['client_p50_ms']} | {result['client_p90_ms']} |")
    lines.append("")
    lines.append(f"{result['count']} tickets, best-of-{result['candidates']}, experts used: {result['experts']}; "
                 f"time outside the classify/plan/score stages: {100 * result['outside_stages_share']:.1f}%; "
                 f"workflows with a decision having both branches: {result['branching']}/{result['count']}; "
                 f"grounded in matched knowledge: {result['matched']}/{result['count']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--tickets", type=Path, default=STARTER_TICKETS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        result = run(args.url.rstrip("/"), args.count, args.candidates, args.tickets)
    except httpx.ConnectError:
        print(f"no service at {args.url}; start it with `flowrouter serve`", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
