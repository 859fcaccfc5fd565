"""FlowRouter's own metrics: Prometheus (through Ray) and the rolling window behind GET /v1/stats.

Every exported series is defined once below (`Series`): the ingress replicas create the first six
with Ray (each node's metrics agent exports them with a `ray_` prefix, next to Ray Serve's own
`ray_serve_*`, and Serve adds deployment/replica/application tags); `GET /metrics`
(deployments/prometheus.py) gathers them from every node as `flowrouter_*` and adds the last two;
the Grafana dashboard's test checks its queries against `exported_names()`.

  flowrouter_tickets_total{outcome, shared, task, expert, mode}  finished tickets (outcome: done|failed)
  flowrouter_ticket_latency_ms{shared, mode}              end-to-end latency inside the ingress
  flowrouter_stage_latency_ms{stage}                      classify, plan, retrieve, score, compute, total
  flowrouter_rejects_total{status, reason}                429/503 refusals (never recorded as accepted)
  flowrouter_retries_total{reason}                        re-runs after a replica crash / stale ticket
  flowrouter_queue_depth{queue}                           inflight, waiting, async_queued, async_running
  flowrouter_store_tickets{status}                        the durable store: queued, running, done, failed
  flowrouter_scrape_nodes{state}                          Ray nodes /metrics read (ok) or could not (failed)

Unknown rate = tickets_total{task="unknown"} / tickets_total; coalesced/cached share = by `shared`.
Metrics fail soft: outside a Ray worker (unit tests) the Prometheus side is a no-op.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass

log = logging.getLogger(__name__)

LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000, 40000, 80000, 160000,
                         320000]
STAGES = ("classify", "plan", "retrieve", "score", "compute", "total")


@dataclass(frozen=True)
class Series:
    """One Prometheus family as `GET /metrics` exports it (a counter's name ends in `_total`)."""

    name: str
    kind: str  # counter | histogram | gauge
    help: str
    labels: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    @property
    def family(self) -> str:
        """The family name in prometheus_client's parser and exposition (a counter's without `_total`)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name

    def sample_names(self) -> tuple[str, ...]:
        if self.kind == "histogram":
            return tuple(self.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        return (self.name,)


TICKETS = Series("flowrouter_tickets_total", "counter", "Finished tickets.",
                 ("outcome", "shared", "task", "expert", "mode"))
TICKET_LATENCY = Series("flowrouter_ticket_latency_ms", "histogram", "Ticket latency in the ingress.",
                        ("shared", "mode"), tuple(LATENCY_BOUNDARIES_MS))
STAGE_LATENCY = Series("flowrouter_stage_latency_ms", "histogram", "Per-stage latency of computed tickets.",
                       ("stage",), tuple(LATENCY_BOUNDARIES_MS))
REJECTS = Series("flowrouter_rejects_total", "counter", "Refused tickets (429/503).", ("status", "reason"))
RETRIES = Series("flowrouter_retries_total", "counter", "Ticket re-runs after a failure.", ("reason",))
QUEUE_DEPTH = Series("flowrouter_queue_depth", "gauge", "Tickets per queue.", ("queue",))
# Reported through Ray by the ingress replicas.
RAY_SERIES = (TICKETS, TICKET_LATENCY, STAGE_LATENCY, REJECTS, RETRIES, QUEUE_DEPTH)
# Computed by GET /metrics itself when it answers.
STORE_TICKETS = Series("flowrouter_store_tickets", "gauge", "Tickets in the durable ticket store by status.",
                       ("status",))
SCRAPE_NODES = Series("flowrouter_scrape_nodes", "gauge", "Ray nodes whose metrics agent this scrape read "
                      "(ok) or could not reach (failed).", ("state",))
EXPORTED = (*RAY_SERIES, STORE_TICKETS, SCRAPE_NODES)


def exported_names() -> set[str]:
    """Every sample name `GET /metrics` can answer with."""
    return {name for series in EXPORTED for name in series.sample_names()}


class _Null:
    def inc(self, *a, **k):
        pass

    def observe(self, *a, **k):
        pass

    def set(self, *a, **k):
        pass


def _ray_metric(m, series: Series):
    if series.kind == "counter":
        return m.Counter(series.name, description=series.help, tag_keys=series.labels)
    if series.kind == "histogram":
        return m.Histogram(series.name, description=series.help, boundaries=list(series.boundaries),
                           tag_keys=series.labels)
    return m.Gauge(series.name, description=series.help, tag_keys=series.labels)


class _Prometheus:
    def __init__(self):
        self.tickets = self.latency = self.stage = self.rejects = self.retries = self.queue = _Null()
        try:
            import ray

            if not ray.is_initialized():
                return
            from ray.serve import metrics as m

            (self.tickets, self.latency, self.stage, self.rejects, self.retries,
             self.queue) = (_ray_metric(m, s) for s in RAY_SERIES)
        except Exception as exc:  # metrics must never take the request path down
            log.warning("Prometheus metrics disabled: %s", exc)


@dataclass
class _Event:
    at: float
    latency_ms: float
    outcome: str  # done | failed
    shared: str | None
    task: str | None
    stages: dict


def _replica_name() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_tag
    except Exception:  # not inside a Serve replica
        return f"pid-{os.getpid()}"


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return round(s[k], 1)


def percentiles(values: list[float]) -> dict:
    return {"p50": _pct(values, 50), "p95": _pct(values, 95), "p99": _pct(values, 99), "count": len(values)}


class FloodMetrics:
    """Counts and a time window of finished/refused tickets for one ingress replica."""

    def __init__(self, window_s: float = 60.0, max_events: int = 20000, clock=time.time):
        self.window_s, self.clock = window_s, clock
        self.started = clock()
        self.events: deque[_Event] = deque(maxlen=max_events)
        self.rejects: deque[tuple[float, int, str]] = deque(maxlen=max_events)
        self.totals: Counter = Counter()
        self.prom = _Prometheus()

    def observe_ticket(self, latency_ms: float, *, ok: bool, shared: str | None = None, task: str | None = None,
                       stages: dict | None = None, mode: str = "sync", expert: str | None = None) -> None:
        outcome = "done" if ok else "failed"
        stages = dict(stages or {})
        self.events.append(_Event(self.clock(), latency_ms, outcome, shared, task, stages))
        self.totals[outcome] += 1
        if shared:
            self.totals[shared] += 1
        if task == "unknown":
            self.totals["unknown"] += 1
        self.prom.tickets.inc(tags={"outcome": outcome, "shared": shared or "none", "task": task or "none",
                                    "expert": expert or "none", "mode": mode})
        self.prom.latency.observe(latency_ms, tags={"shared": shared or "none", "mode": mode})
        if ok and not shared:
            for stage in STAGES:
                if stage in stages:
                    self.prom.stage.observe(float(stages[stage]), tags={"stage": stage})

    def observe_reject(self, status: int, reason: str) -> None:
        self.rejects.append((self.clock(), status, reason))
        self.totals["rejected"] += 1
        self.prom.rejects.inc(tags={"status": str(status), "reason": reason})

    def observe_retry(self, reason: str) -> None:
        self.totals["retries"] += 1
        self.prom.retries.inc(tags={"reason": reason})

    def set_queue(self, **depths: int) -> None:
        for name, value in depths.items():
            self.prom.queue.set(value, tags={"queue": name})

    def snapshot(self) -> dict:
        """The /v1/stats body without queue/cache/store sections (the gate adds those)."""
        now = self.clock()
        since = now - self.window_s
        recent = [e for e in self.events if e.at >= since]
        done = [e for e in recent if e.outcome == "done"]
        span = max(1e-9, min(self.window_s, now - self.started))
        computed = [e for e in done if not e.shared]
        rejects = [(s, r) for t, s, r in self.rejects if t >= since]
        n = len(done)
        return {
            "replica": _replica_name(),
            "uptime_s": round(now - self.started, 1),
            "window_s": self.window_s,
            "tickets_per_s": round(n / span, 4),
            "latency_ms": percentiles([e.latency_ms for e in done]),
            "computed_latency_ms": percentiles([e.latency_ms for e in computed]),
            "stage_ms": {s: percentiles([float(e.stages[s]) for e in computed if s in e.stages])
                         for s in ("classify", "plan", "score")},
            "unknown_rate": round(sum(1 for e in done if e.task == "unknown") / n, 4) if n else None,
            "shared": {
                "coalesced": round(sum(1 for e in done if e.shared == "coalesced") / n, 4) if n else None,
                "cache": round(sum(1 for e in done if e.shared == "cache") / n, 4) if n else None,
            },
            "errors": sum(1 for e in recent if e.outcome == "failed"),
            "rejects": {"total": len(rejects), "per_s": round(len(rejects) / span, 4),
                        "by_status": dict(Counter(str(s) for s, _ in rejects)),
                        "by_reason": dict(Counter(r for _, r in rejects))},
            "totals": {k: self.totals.get(k, 0) for k in ("done", "failed", "rejected", "coalesced", "cache",
                                                           "unknown", "retries")},
        }
