"""Latency of one ticket at a time, per stage, against a running service (HTTP only).

    python -m load_tests.bench_latency --url http://127.0.0.1:8000 --count 8 --candidates 4
    python -m load_tests.bench_latency --compare-engine transformers --count 4 --candidates 4 [--config FILE]

Sends the starter pack's sample tickets one after another (no concurrency, cache bypassed where the
service supports it) and prints, per stage, the median and p90 of the service's own timings plus the
client-side end-to-end latency, and the share of end-to-end time spent outside the model stages.
It also says what came back: how many workflows have a decision with both branches, and how many
answers were grounded in matched knowledge.

With --compare-engine ENGINE it starts what it needs: a service on the config as it is (its default engines),
then one on the same config with every model (classifier, experts, Scorer) on ENGINE, one after the other, each
with a state dir of its own. The same tickets go through both; the second service gets each ticket's expert as
the first one routed it, so both plan with the same expert. The last line is the plan stage's speed-up of the
config's engines over ENGINE (p50 of ENGINE's plan time / p50 of the default's), as `N.Nx`. On the CPU default
both are transformers, so it reads about 1.0x; on the GPU config it measures vLLM against transformers.
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


def run(url: str, count: int, candidates: int, tickets_file: Path, warmup: int = 1,
        forced: list[str] | None = None) -> dict:
    """`forced`: the expert for each measured ticket (as another run routed it), instead of the service's routing."""
    rows = [json.loads(x) for x in tickets_file.read_text().splitlines() if x.strip()]
    tickets = [{k: r[k] for k in ("title", "description") if k in r} for r in rows]
    timings: dict[str, list[float]] = {s: [] for s in STAGES}
    client: list[float] = []
    experts: dict[str, int] = {}
    routed: list[str] = []
    branching = matched = 0
    key = os.environ.get("FLOWROUTER_API_KEY")  # for a service in `auth.mode: keys`
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=900, headers=headers) as http:
        for i in range(warmup + count):
            t = tickets[i % len(tickets)]
            params = {"candidates": candidates, "cache": "false"}
            if forced and i >= warmup:
                params["expert"] = forced[i - warmup]
            t0 = time.perf_counter()
            r = http.post(f"{url}/v1/tickets", params=params, json=t)
            elapsed = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                raise SystemExit(f"ticket {i} failed: HTTP {r.status_code} {r.text[:200]}")
            if i < warmup:
                continue
            body = r.json()
            client.append(elapsed)
            experts[body["expert"]] = experts.get(body["expert"], 0) + 1
            routed.append(body["expert"])
            branching += Workflow.model_validate({"steps": body["workflow"]["steps"]}).branching_decisions() >= 1
            matched += (body.get("knowledge") or {}).get("status") == "matched"
            for s in STAGES:
                if s in body["timings_ms"]:
                    timings[s].append(body["timings_ms"][s])
    model_ms = [c + p + s for c, p, s in zip(timings["classify"], timings["plan"], timings["score"])]
    return {
        "count": count, "candidates": candidates, "experts": experts, "routed": routed, "branching": branching,
        "matched": matched,
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


def engine_variant(config: str | None, engine: str | None, state_dir: Path) -> Path:
    """The config as a YAML file with its own state dir and, when `engine` is given, every model on it."""
    import yaml

    from core.config import load_config

    cfg = load_config(config)
    if engine:
        for spec in [cfg.classifier.model, *cfg.experts, cfg.scorer.model]:
            spec.engine = engine
    cfg.serve.state_dir = str(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"source"})))
    return path


def speedup(default: dict, other: dict) -> float:
    """How many times faster the default engines' plan stage is than `other`'s (p50 over p50)."""
    return other["stages"]["plan"]["p50_ms"] / default["stages"]["plan"]["p50_ms"]


def compare_engine(engine: str, config: str | None, count: int, candidates: int, tickets: Path) -> dict:
    import tempfile

    from load_tests.run import Service

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as work:
        forced = None
        for label, variant in (("default", None), (engine, engine)):
            path = engine_variant(config, variant, Path(work) / label)
            service = Service(None, str(path), reuse=False)
            try:
                print(f"{label}: {count} tickets, best-of-{candidates} on {service.url}", flush=True)
                results[label] = run(service.url, count, candidates, tickets, forced=forced)
            finally:
                service.close()
            forced = results[label]["routed"]
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--tickets", type=Path, default=STARTER_TICKETS)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--compare-engine", choices=("transformers", "vllm"),
                    help="start a service on the config and one with every model on this engine; same tickets "
                         "and experts through both; the last line is the plan stage's speed-up")
    ap.add_argument("--config", help="with --compare-engine: the config (default configs/default.yaml)")
    args = ap.parse_args(argv)
    if args.compare_engine:
        results = compare_engine(args.compare_engine, args.config, args.count, args.candidates, args.tickets)
        for label, result in results.items():
            print(json.dumps(result, indent=2) if args.json else f"\n{label}:\n{render(result)}")
        print(f"plan stage p50, {args.compare_engine} / the config's engines (same tickets and experts):")
        print(f"{speedup(results['default'], results[args.compare_engine]):.1f}x")
        return 0
    try:
        result = run(args.url.rstrip("/"), args.count, args.candidates, args.tickets)
    except httpx.ConnectError:
        print(f"no service at {args.url}; start it with `flowrouter serve`", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
