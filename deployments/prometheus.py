"""GET /metrics: FlowRouter's Prometheus series for the whole service, whichever ingress replica answers.

Each ingress replica reports its `flowrouter_*` series (deployments/metrics.py) to its node's Ray
metrics agent, which exports them with a `ray_` prefix on the node's metrics export port. A scrape
lands on one ingress replica, so the handler reads every alive node's agent (`ray.nodes()`:
NodeManagerAddress, MetricsExportPort; the same on a private local Ray and on a cluster), keeps
FlowRouter's families, strips Ray's prefix and its per-process labels, sums the series that then
coincide, and adds gauges computed on the spot (the durable store's tickets by status, and how many
nodes were read). Every replica's series stays its own (`replica` label): a replica that restarts
resets only its own counters, which Prometheus' rate() handles, where a pre-summed total would drop.

Freshness: a replica hands its values to the agent every `metrics_report_interval_ms` (Ray's
default 10 s; RAY_metrics_report_interval_ms in the environment of `ray start` / the server), so a
ticket shows up in /metrics up to ~10 s after it finished; scrape every 15 s or more. Ray's
histogram `_sum` is approximated from bucket midpoints; the buckets (and so quantiles) are exact.
The answer is cached for CACHE_S, so many scrapers cost one round of fetches per replica.
"""


import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import httpx
from fastapi.responses import Response
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from deployments.metrics import EXPORTED, RAY_SERIES, SCRAPE_NODES, STORE_TICKETS, Series

log = logging.getLogger("flowrouter.prometheus")

RAY_PREFIX = "ray_"
NODE_TIMEOUT_S = 2.0
CACHE_S = 1.0
STORE_STATUSES = ("queued", "running", "done", "failed")
# Labels Ray adds to every series that identify its own process and session, not FlowRouter's
# replica (Serve's `replica`, `deployment`, `application` tags do that and are kept).
RAY_LABELS = frozenset({"Component", "SessionName", "Version", "WorkerId", "JobId", "otel_scope_name",
                        "otel_scope_schema_url", "otel_scope_version"})
RENAMED_LABELS = {"NodeAddress": "node"}

SampleKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


def ray_metrics_urls() -> list[str]:
    """The Prometheus endpoint of every alive Ray node's metrics agent, from the GCS."""
    import ray

    urls = set()
    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        if not node.get("Alive") or not port:
            continue
        host = node["NodeManagerAddress"]
        urls.add(f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics")
    return sorted(urls)


def relabel(labels: dict[str, str]) -> dict[str, str]:
    return {RENAMED_LABELS.get(k, k): v for k, v in labels.items() if k not in RAY_LABELS}


def aggregate(texts: Iterable[str], series: Iterable[Series] = RAY_SERIES) -> dict[str, dict[SampleKey, float]]:
    """FlowRouter's samples from Ray agents' exposition texts, prefix and Ray labels stripped, summed where
    they coincide: {family: {(sample name, labels): value}}. Everything else (Ray's own series) is left out."""
    wanted = {s.family: s for s in series}
    out: dict[str, dict[SampleKey, float]] = defaultdict(lambda: defaultdict(float))
    for text in texts:
        for family in text_string_to_metric_families(text):
            name = family.name.removeprefix(RAY_PREFIX)
            if name not in wanted:
                continue
            allowed = set(wanted[name].sample_names())
            for sample in family.samples:
                sample_name = sample.name.removeprefix(RAY_PREFIX)
                if sample_name not in allowed:  # _created and other OpenMetrics extras
                    continue
                key = (sample_name, tuple(sorted(relabel(sample.labels).items())))
                out[name][key] += sample.value
    return out


def _order(key: SampleKey) -> tuple:
    name, labels = key
    rest = tuple(kv for kv in labels if kv[0] != "le")
    le = dict(labels).get("le")
    return rest, name, float(le) if le is not None else 0.0


class _Families:
    """What generate_latest needs from a registry."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self):
        return iter(self.families)


def render(aggregated: dict[str, dict[SampleKey, float]], store_counts: dict[str, int] | None,
           nodes_ok: int, nodes_failed: int) -> bytes:
    """The /metrics body: every series of deployments.metrics.EXPORTED that has samples, in that order."""
    samples = {k: dict(v) for k, v in aggregated.items()}
    if store_counts is not None:
        samples[STORE_TICKETS.family] = {(STORE_TICKETS.name, (("status", s),)): float(store_counts.get(s, 0))
                                         for s in STORE_STATUSES}
    samples[SCRAPE_NODES.family] = {(SCRAPE_NODES.name, (("state", "ok"),)): float(nodes_ok),
                                    (SCRAPE_NODES.name, (("state", "failed"),)): float(nodes_failed)}
    families = []
    for series in EXPORTED:
        values = samples.get(series.family)
        if not values:
            continue
        metric = Metric(series.family, series.help, series.kind)
        for key in sorted(values, key=_order):
            metric.add_sample(key[0], dict(key[1]), values[key])
        families.append(metric)
    return generate_latest(_Families(families))


async def fetch(urls: list[str], timeout_s: float = NODE_TIMEOUT_S,
                transport: httpx.AsyncBaseTransport | None = None) -> tuple[list[str], list[str]]:
    """(texts read, urls that failed), all nodes at once."""
    async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as client:
        answers = await asyncio.gather(*[client.get(u) for u in urls], return_exceptions=True)
    texts, failed = [], []
    for url, answer in zip(urls, answers):
        if isinstance(answer, httpx.Response) and answer.status_code == 200:
            texts.append(answer.text)
        else:
            failed.append(url)
    return texts, failed


class PrometheusExporter:
    """The ingress's GET /metrics: one cached, service-wide exposition."""

    def __init__(self, store_counts: Callable[[], dict[str, int]],
                 node_urls: Callable[[], list[str]] = ray_metrics_urls, timeout_s: float = NODE_TIMEOUT_S,
                 cache_s: float = CACHE_S, transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.store_counts, self.node_urls = store_counts, node_urls
        self.timeout_s, self.cache_s, self.transport, self.clock = timeout_s, cache_s, transport, clock
        self._body: bytes | None = None
        self._at = 0.0
        self._lock: asyncio.Lock | None = None
        self._failing: set[str] = set()

    async def body(self) -> bytes:
        if self._lock is None:
            self._lock = asyncio.Lock()  # made in the replica's event loop
        async with self._lock:
            if self._body is None or self.clock() - self._at >= self.cache_s:
                self._body = await self._collect()
                self._at = self.clock()
            return self._body

    async def response(self) -> Response:
        return Response(content=await self.body(), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    async def _collect(self) -> bytes:
        try:
            urls = await asyncio.to_thread(self.node_urls)
        except Exception as exc:  # no Ray here, or the GCS is unreachable: still answer with the store
            log.warning("metrics: cannot list Ray nodes: %s", exc)
            urls = []
        texts, failed = await fetch(urls, self.timeout_s, self.transport) if urls else ([], [])
        for url in sorted(set(failed) - self._failing):
            log.warning("metrics: cannot read the Ray metrics agent at %s; its node's series are missing", url)
        self._failing = set(failed)
        try:
            counts = self.store_counts()
        except Exception as exc:  # the store gauges are left out, the rest still answers
            log.warning("metrics: cannot count the ticket store: %s", exc)
            counts = None
        return render(aggregate(texts), counts, len(texts), len(failed))
