"""Ticket-flood benchmark: a sequential baseline against FlowRouter under concurrency, in one run.

    python -m load_tests.bench_flood                 # make bench-flood
    python -m load_tests.bench_flood --url http://127.0.0.1:8000 --diverse 6 --json runs/bench.json

Same machine, same service, same models for every phase:
  storm    baseline: `--storm-baseline` near-duplicate storm tickets one at a time with `cache=false`
                     (no coalescing, no cache, batches of one);
           FlowRouter: `--storm-requests` near-duplicates of the same incidents, `--storm-concurrency` at once,
                     cache and coalescing on (fresh incidents: a per-run nonce word keeps the cache cold).
  diverse  baseline: `--diverse` distinct real tickets one at a time, `cache=false`;
           FlowRouter: the same tickets, all at once (`cache=false` too: distinct tickets share nothing, so
                     only dynamic batching and replica parallelism differ from the baseline).
  best-of  `--bestof-tickets` tickets, forced to one expert, one at a time, with N=1 and N=4.
Printed: throughput ratios, serving overhead (share of each computed ticket's end-to-end time outside
model compute, from the per-stage compute timings the deployments report), best-of-4 / best-of-1 latency
ratio, classifier stage p50/p99, and the 1-minute load average around each phase (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from load_tests.data import DataUnavailable, diverse, load_rows, near_duplicate, run_nonce, storm_incidents, to_ticket
from load_tests.run import Service


def service_tree(url: str):
    """The local service's processes (server, raylet, GCS, replicas), found from the port it listens on.

    Used only to read their CPU time, which tells what share of the machine the service actually got
    in each phase (the machine is shared); None when they cannot be found (another user, no psutil)."""
    try:
        import psutil

        port = urlparse(url).port
        pid = next(c.pid for c in psutil.net_connections(kind="tcp")
                   if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid)
        proc = psutil.Process(pid)  # the Serve proxy, a Ray worker
        chain = [proc, *proc.parents()]
        raylet = next(p for p in chain if "raylet" in " ".join(p.cmdline()[:1]))
        above = raylet.parent()
        return above if above and "cluster.cli" in " ".join(above.cmdline()) else raylet
    except Exception:
        return None


def cpu_seconds(root) -> float | None:
    if root is None:
        return None
    total = 0.0
    try:
        procs = [root, *root.children(recursive=True)]
    except Exception:
        return None
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:
            pass
    return total


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


class Phase:
    def __init__(self, name: str):
        self.name = name
        self.results: list[dict] = []  # {latency_ms, status, body}
        self.wall_s = 0.0
        self.load = (0.0, 0.0)
        self.cpu_s: float | None = None  # CPU seconds the service's processes used in the phase

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.results if r["status"] == 200]

    def throughput(self) -> float:
        return len(self.ok) / self.wall_s if self.wall_s else 0.0

    def computed(self) -> list[dict]:
        return [r for r in self.ok if not r["body"].get("shared")]

    def summary(self) -> dict:
        lat = [r["latency_ms"] for r in self.ok]
        shared = [r["body"].get("shared") for r in self.ok]
        return {"requests": len(self.results), "ok": len(self.ok), "wall_s": round(self.wall_s, 1),
                "throughput_per_s": round(self.throughput(), 4),
                "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99)},
                "computed": len(self.computed()), "coalesced": shared.count("coalesced"), "cache": shared.count("cache"),
                "status": {str(s): sum(1 for r in self.results if r["status"] == s)
                           for s in sorted({r["status"] for r in self.results})},
                "stage_ms_mean": {k: round(statistics.mean(r["body"]["timings_ms"].get(k, 0.0) for r in self.computed()), 1)
                                  for k in ("classify", "plan", "score", "compute", "total")} if self.computed() else {},
                "loadavg_1m": [round(x, 2) for x in self.load],
                "service_cpu_s": None if self.cpu_s is None else round(self.cpu_s, 1),
                "service_cores": None if self.cpu_s is None or not self.wall_s else round(self.cpu_s / self.wall_s, 2),
                "cpu_s_per_ticket": None if self.cpu_s is None or not self.ok else round(self.cpu_s / len(self.ok), 2)}


async def _post(client: httpx.AsyncClient, body: dict, params: dict) -> dict:
    t0 = time.perf_counter()
    r = await client.post("/v1/tickets", json=body, params=params, timeout=1800)
    return {"latency_ms": (time.perf_counter() - t0) * 1000, "status": r.status_code,
            "body": r.json() if r.headers.get("content-type", "").startswith("application/json") else {}}


async def run_phase(client, name: str, bodies: list[dict], params: dict, concurrency: int, tree=None) -> Phase:
    phase = Phase(name)
    cpu0 = cpu_seconds(tree)
    sem = asyncio.Semaphore(concurrency)

    async def one(body):
        async with sem:
            phase.results.append(await _post(client, body, params))

    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    await asyncio.gather(*[one(b) for b in bodies])
    phase.wall_s = time.perf_counter() - t0
    phase.load = (load0, os.getloadavg()[0])
    cpu1 = cpu_seconds(tree)
    phase.cpu_s = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    cores = f", service used {phase.cpu_s / phase.wall_s:.2f} cores" if phase.cpu_s is not None else ""
    print(f"  {name:<28} {len(phase.ok):>3}/{len(bodies)} ok in {phase.wall_s:7.1f}s  "
          f"{phase.throughput():.4f} tickets/s  (load {phase.load[0]:.1f} -> {phase.load[1]:.1f}{cores})", flush=True)
    return phase


def overhead(phases: list[Phase]) -> dict:
    """Share of end-to-end time outside model compute, over computed tickets (client and ingress views)."""
    rows = [r for p in phases for r in p.computed() if "compute" in r["body"].get("timings_ms", {})]
    if not rows:
        return {"tickets": 0}
    compute = sum(r["body"]["timings_ms"]["compute"] for r in rows)
    client = sum(r["latency_ms"] for r in rows)
    ingress = sum(r["body"]["timings_ms"]["total"] for r in rows)
    return {"tickets": len(rows), "client_share": round(1 - compute / client, 4),
            "ingress_share": round(1 - compute / ingress, 4),
            "mean_client_ms": round(client / len(rows), 1), "mean_compute_ms": round(compute / len(rows), 1)}


async def bench(url: str, args) -> dict:
    rows = load_rows()
    rng = random.Random(args.seed)
    nonce = run_nonce(rng)
    incidents = [f"{t} ref {nonce}" for t in storm_incidents(rows, k=args.incidents, seed=args.seed)]
    storm = [to_ticket(near_duplicate(rng.choice(incidents), rng)) for _ in range(args.storm_requests)]
    storm_base = [to_ticket(near_duplicate(incidents[i % len(incidents)], rng)) for i in range(args.storm_baseline)]
    distinct = [to_ticket(f"{t} ref {nonce}") for t in diverse(rows, args.diverse + args.bestof_tickets, seed=args.seed)]
    div, bestof = distinct[:args.diverse], distinct[args.diverse:]
    n = {"candidates": args.candidates}
    nocache = {**n, "cache": "false"}
    out: dict = {"url": url, "candidates": args.candidates, "cpus": os.cpu_count(), "phases_run": sorted(args.phases)}
    tree = service_tree(url)
    key = os.environ.get("FLOWROUTER_API_KEY")  # for a service in `auth.mode: keys`
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    ph: dict[str, Phase] = {}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=httpx.Limits(max_connections=256)) as client:
        print("warm-up (2 tickets) ...", flush=True)
        await run_phase(client, "warm-up", [to_ticket(f"warm up ticket {nonce} {w}") for w in ("a", "b")], nocache, 2)
        if "storm" in args.phases:
            print("storm:", flush=True)
            ph["sb"] = await run_phase(client, "storm baseline (seq)", storm_base, nocache, 1, tree)
            ph["sf"] = await run_phase(client, f"storm FlowRouter (c={args.storm_concurrency})", storm, n,
                                       args.storm_concurrency, tree)
        if "diverse" in args.phases:
            print("diverse:", flush=True)
            ph["db"] = await run_phase(client, "diverse baseline (seq)", div, nocache, 1, tree)
            ph["df"] = await run_phase(client, f"diverse FlowRouter (c={len(div)})", div, nocache, len(div), tree)
        if "bestof" in args.phases:
            print("best-of-N:", flush=True)
            forced = {"expert": args.bestof_expert, "cache": "false"}
            ph["b1"] = await run_phase(client, "best-of-1 (seq)", bestof, {**forced, "candidates": 1}, 1, tree)
            ph["b4"] = await run_phase(client, "best-of-4 (seq)", bestof, {**forced, "candidates": 4}, 1, tree)
        stats = (await client.get("/v1/stats", timeout=60)).json()
    mean = statistics.mean

    def ratio(a: str, b: str) -> float | None:
        if a in ph and b in ph and ph[b].throughput():
            return round(ph[a].throughput() / ph[b].throughput(), 2)
        return None

    def cpu_ratio(base: str, conc: str) -> float | None:
        """Service CPU-seconds per ticket, baseline / concurrent: the work batching and sharing saved."""
        b, c = ph.get(base), ph.get(conc)
        if not b or not c or b.cpu_s is None or c.cpu_s is None or not b.ok or not c.ok or c.cpu_s <= 0:
            return None
        return round((b.cpu_s / len(b.ok)) / (c.cpu_s / len(c.ok)), 2)

    classify = [r["body"]["timings_ms"]["classify"] for p in ph.values() for r in p.computed()]
    seq = [ph[k] for k in ("sb", "db", "b1", "b4") if k in ph]
    conc = [ph[k] for k in ("sf", "df") if k in ph]
    out.update({
        "phases": {p.name: p.summary() for p in ph.values()},
        "throughput_ratio": {"storm": ratio("sf", "sb"), "diverse": ratio("df", "db")},
        "cpu_per_ticket_ratio": {"storm": cpu_ratio("sb", "sf"), "diverse": cpu_ratio("db", "df")},
        "overhead": {"sequential": overhead(seq), "concurrent": overhead(conc)},
        "bestof_ratio": round(mean(r["latency_ms"] for r in ph["b4"].ok) / mean(r["latency_ms"] for r in ph["b1"].ok), 3)
        if "b1" in ph and ph["b1"].ok and ph["b4"].ok else None,
        "classifier_ms": {"p50": pct(classify, 50), "p99": pct(classify, 99), "n": len(classify)},
        "service_stats": {k: stats.get(k) for k in ("shared", "totals", "queue", "cache")},
    })
    return out


def report(r: dict) -> str:
    tr, ov = r["throughput_ratio"], r["overhead"]
    c = r["classifier_ms"]

    def f(x, spec=".2f"):
        return "n/a" if x is None else format(x, spec)

    lines = [
        "",
        "Ticket floods — one run, same machine and models",
        f"  throughput ratio, storm   (FlowRouter / sequential baseline): {f(tr['storm'])}x   (target >= 5x)",
        f"  throughput ratio, diverse (FlowRouter / sequential baseline): {f(tr['diverse'])}x   (target >= 2x)",
        f"  service CPU-seconds per ticket, baseline / FlowRouter: storm {f(r['cpu_per_ticket_ratio']['storm'])}x, "
        f"diverse {f(r['cpu_per_ticket_ratio']['diverse'])}x   (work saved, independent of the machine's other load)",
        f"  serving overhead, sequential (outside model compute, client view): "
        f"{f(100 * ov['sequential'].get('client_share', float('nan')), '.1f')}%   (target <= 10%; ingress view "
        f"{f(100 * ov['sequential'].get('ingress_share', float('nan')), '.1f')}%)",
        f"  time outside model compute under concurrency (queueing included): "
        f"{f(100 * ov['concurrent'].get('client_share', float('nan')), '.1f')}%",
        f"  best-of-4 / best-of-1 latency: {f(r['bestof_ratio'])}x   (target <= 1.5x)",
        f"  classifier stage latency: p50 {f(c['p50'], '.0f')} ms, p99 {f(c['p99'], '.0f')} ms (n={c['n']})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="FlowRouter on 127.0.0.1 (default: :8000 if it answers, else start one)")
    ap.add_argument("--config", help="config for a service this run starts")
    ap.add_argument("--candidates", type=int, default=1, help="N for the throughput phases (default 1)")
    ap.add_argument("--incidents", type=int, default=3)
    ap.add_argument("--storm-baseline", type=int, default=3, help="sequential storm tickets (each fully computed)")
    ap.add_argument("--storm-requests", type=int, default=60)
    ap.add_argument("--storm-concurrency", type=int, default=16)
    ap.add_argument("--diverse", type=int, default=6, help="distinct tickets (baseline and concurrent phases)")
    ap.add_argument("--bestof-tickets", type=int, default=2)
    ap.add_argument("--bestof-expert", default="smollm2-generalist")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--phases", type=lambda v: set(v.split(",")), default={"storm", "diverse", "bestof"},
                    help="comma-separated subset of storm,diverse,bestof (default: all)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    try:
        load_rows(limit=10)
    except DataUnavailable as exc:
        print(f"SKIPPED: {exc}")
        return 0
    service = Service(args.url, args.config)
    try:
        print(f"benchmarking {service.url} ...", flush=True)
        result = asyncio.run(bench(service.url, args))
    finally:
        service.close()
    print(report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
