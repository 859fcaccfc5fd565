"""GET /metrics without Ray: gathering Ray agents' expositions, relabelling, rendering, caching, access,
and the Grafana dashboard's queries against the series the service exports."""

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.auth_config import ApiKeySpec, AuthConfig
from deployments import auth, prometheus
from deployments.metrics import EXPORTED, TICKETS, FloodMetrics, exported_names
from deployments.prometheus import PrometheusExporter, aggregate, ray_metrics_urls, render

DASHBOARD = Path(__file__).resolve().parents[2] / "deployments" / "grafana" / "flowrouter.json"

RAY = ('Component="core_worker",NodeAddress="{node}",SessionName="session_x",Version="2.60.0",WorkerId="{worker}",'
       'otel_scope_name="ray._private.telemetry.open_telemetry_metric_recorder",otel_scope_schema_url="",'
       'otel_scope_version=""')


def node_text(node: str, replica: str, done: float, plan_ms_count: float, queue: float) -> str:
    """A Ray metrics agent's answer, in the shape Ray 2.60 exports (labels and all)."""
    ray = RAY.format(node=node, worker=f"w-{replica}")
    serve = f'application="flowrouter",deployment="ingress",replica="{replica}"'
    shared = 'application="flowrouter",deployment="ingress",replica="shared"'
    tickets = f'{ray},{serve},expert="smollm2-generalist",mode="sync",outcome="done",shared="none",task="storage"'
    return f"""# HELP ray_flowrouter_tickets_total Finished tickets.
# TYPE ray_flowrouter_tickets_total counter
ray_flowrouter_tickets_total{{{tickets}}} {done}
# HELP ray_flowrouter_stage_latency_ms Per-stage latency of computed tickets.
# TYPE ray_flowrouter_stage_latency_ms histogram
ray_flowrouter_stage_latency_ms_bucket{{{ray},{serve},le="10.0",stage="plan"}} 0.0
ray_flowrouter_stage_latency_ms_bucket{{{ray},{serve},le="+Inf",stage="plan"}} {plan_ms_count}
ray_flowrouter_stage_latency_ms_bucket{{{ray},{serve},le="5.0",stage="plan"}} 0.0
ray_flowrouter_stage_latency_ms_count{{{ray},{serve},stage="plan"}} {plan_ms_count}
ray_flowrouter_stage_latency_ms_sum{{{ray},{serve},stage="plan"}} {plan_ms_count * 30000}
# HELP ray_flowrouter_queue_depth Tickets per queue.
# TYPE ray_flowrouter_queue_depth gauge
ray_flowrouter_queue_depth{{{ray},{serve},queue="inflight"}} {queue}
# HELP ray_flowrouter_rejects_total Refused tickets (429/503).
# TYPE ray_flowrouter_rejects_total counter
ray_flowrouter_rejects_total{{{ray},{shared},reason="queue_full",status="429"}} 2.0
# HELP ray_serve_num_http_requests_total Serve's own.
# TYPE ray_serve_num_http_requests_total counter
ray_serve_num_http_requests_total{{{ray},route="/v1/tickets"}} 9.0
# HELP ray_node_cpu_count Ray's own.
# TYPE ray_node_cpu_count gauge
ray_node_cpu_count{{{ray}}} 2.0
"""


def families(body: bytes | str) -> dict:
    text = body.decode() if isinstance(body, bytes) else body
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fam, sample: str, **labels) -> float:
    hits = [s.value for s in fam.samples if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
    assert hits, f"no {sample}{labels} in {fam.samples}"
    return sum(hits)


def test_aggregate_keeps_flowrouter_series_strips_ray_prefix_and_labels_and_sums_coinciding():
    texts = [node_text("10.0.0.1", "ingress#a", 3, 2, 1), node_text("10.0.0.2", "ingress#b", 4, 1, 2)]
    agg = aggregate(texts)
    assert set(agg) == {"flowrouter_tickets", "flowrouter_stage_latency_ms", "flowrouter_queue_depth",
                        "flowrouter_rejects"}, "Ray's and Serve's own series are left out"
    for samples in agg.values():
        for name, labels in samples:
            assert name.startswith("flowrouter_")
            keys = dict(labels)
            assert not keys.keys() & {"WorkerId", "Component", "SessionName", "Version", "otel_scope_name"}
    tickets = agg["flowrouter_tickets"]
    assert len(tickets) == 2, "each replica keeps its own series"
    assert {dict(labels)["replica"]: v for (_, labels), v in tickets.items()} == {"ingress#a": 3, "ingress#b": 4}
    assert {dict(labels)["node"] for _, labels in tickets} == {"10.0.0.1", "10.0.0.2"}
    # The same series seen on two nodes (here: only the node label differs once it is renamed) stay apart...
    rejects = agg["flowrouter_rejects"]
    assert sorted(rejects.values()) == [2.0, 2.0]
    # ...and fully identical ones are summed.
    same = aggregate([node_text("10.0.0.1", "ingress#a", 3, 2, 1), node_text("10.0.0.1", "ingress#a", 4, 1, 2)])
    assert list(same["flowrouter_tickets"].values()) == [7.0]
    assert sum(v for (n, _), v in same["flowrouter_stage_latency_ms"].items() if n.endswith("_count")) == 3.0


def test_render_is_valid_exposition_with_flowrouter_names_and_the_store_gauges():
    texts = [node_text("10.0.0.1", "ingress#a", 3, 2, 1), node_text("10.0.0.2", "ingress#b", 4, 1, 2)]
    body = render(aggregate(texts), {"done": 7, "failed": 1, "queued": 2}, nodes_ok=2, nodes_failed=1)
    text = body.decode()
    assert "ray_" not in text and "WorkerId" not in text
    assert "# TYPE flowrouter_tickets_total counter" in text
    assert "# TYPE flowrouter_stage_latency_ms histogram" in text
    fams = families(body)
    assert fams["flowrouter_tickets"].type == "counter"
    assert value(fams["flowrouter_tickets"], "flowrouter_tickets_total", outcome="done") == 7
    assert value(fams["flowrouter_tickets"], "flowrouter_tickets_total", expert="smollm2-generalist") == 7
    stage = fams["flowrouter_stage_latency_ms"]
    assert stage.type == "histogram"
    assert value(stage, "flowrouter_stage_latency_ms_count", stage="plan") == 3
    assert value(stage, "flowrouter_stage_latency_ms_bucket", stage="plan", le="+Inf") == 3
    # Buckets of one series come in ascending `le` order (as Prometheus' own clients write them).
    les = [s.labels["le"] for s in stage.samples if s.name.endswith("_bucket") and s.labels["replica"] == "ingress#a"]
    assert les == ["5.0", "10.0", "+Inf"]
    assert value(fams["flowrouter_queue_depth"], "flowrouter_queue_depth", queue="inflight") == 3
    store = fams["flowrouter_store_tickets"]
    assert {s.labels["status"]: s.value for s in store.samples} == {"queued": 2, "running": 0, "done": 7, "failed": 1}
    nodes = fams["flowrouter_scrape_nodes"]
    assert {s.labels["state"]: s.value for s in nodes.samples} == {"ok": 2, "failed": 1}
    assert {s.name for f in fams.values() for s in f.samples} <= exported_names()
    assert fams["flowrouter_tickets"].documentation == TICKETS.help


def test_render_without_ray_or_store_still_answers():
    fams = families(render({}, None, 0, 0))
    assert set(fams) == {"flowrouter_scrape_nodes"}


class Agents:
    """Ray metrics agents behind an httpx mock transport; `down` ones answer 500 or time out."""

    def __init__(self, texts: dict[str, str], down: dict[str, str] | None = None):
        self.texts, self.down, self.calls = texts, down or {}, 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        url = str(request.url)
        if self.down.get(url) == "timeout":
            raise httpx.ConnectTimeout("timed out", request=request)
        if url in self.down:
            return httpx.Response(500, text="agent broken")
        return httpx.Response(200, text=self.texts[url])


def test_exporter_reads_every_node_counts_failures_and_caches():
    urls = ["http://10.0.0.1:9100/metrics", "http://10.0.0.2:9100/metrics", "http://10.0.0.3:9100/metrics",
            "http://10.0.0.4:9100/metrics"]
    agents = Agents({urls[0]: node_text("10.0.0.1", "ingress#a", 3, 2, 1),
                     urls[1]: node_text("10.0.0.2", "ingress#b", 4, 1, 2)},
                    down={urls[2]: "500", urls[3]: "timeout"})
    now = [100.0]
    counted = []

    def counts():
        counted.append(1)
        return {"done": 7}

    exporter = PrometheusExporter(counts, node_urls=lambda: urls, transport=httpx.MockTransport(agents.handler),
                                  clock=lambda: now[0])

    async def scrape():
        r = await exporter.response()
        assert r.media_type.startswith("text/plain; version=0.0.4")
        return r.body

    body = asyncio.run(scrape())
    fams = families(body)
    assert value(fams["flowrouter_tickets"], "flowrouter_tickets_total") == 7, "both replicas' counts, any replica"
    assert {s.labels["state"]: s.value for s in fams["flowrouter_scrape_nodes"].samples} == {"ok": 2, "failed": 2}
    assert agents.calls == 4 and len(counted) == 1
    now[0] += 0.5
    assert asyncio.run(scrape()) == body and agents.calls == 4, "cached within CACHE_S"
    now[0] += prometheus.CACHE_S
    asyncio.run(scrape())
    assert agents.calls == 8 and len(counted) == 2


def test_exporter_without_ray_answers_with_the_store():
    def no_ray():
        raise RuntimeError("Ray is not initialized")

    exporter = PrometheusExporter(lambda: {"queued": 1}, node_urls=no_ray)
    fams = families(asyncio.run(exporter.body()))
    assert value(fams["flowrouter_store_tickets"], "flowrouter_store_tickets", status="queued") == 1
    assert {s.labels["state"]: s.value for s in fams["flowrouter_scrape_nodes"].samples} == {"ok": 0, "failed": 0}


def test_ray_metrics_urls_lists_alive_nodes_with_an_export_port(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [
        {"Alive": True, "NodeManagerAddress": "10.0.0.1", "MetricsExportPort": 8080},
        {"Alive": False, "NodeManagerAddress": "10.0.0.2", "MetricsExportPort": 8080},
        {"Alive": True, "NodeManagerAddress": "10.0.0.3", "MetricsExportPort": 0},
        {"Alive": True, "NodeManagerAddress": "fd00::5", "MetricsExportPort": 8080},
    ])
    assert ray_metrics_urls() == ["http://10.0.0.1:8080/metrics", "http://[fd00::5]:8080/metrics"]


def test_ticket_counter_carries_the_expert_label():
    seen = []

    class Spy:
        def inc(self, tags):
            seen.append(tags)

    m = FloodMetrics()
    m.prom.tickets = Spy()
    m.observe_ticket(12.0, ok=True, task="storage", expert="smollm2-generalist")
    m.observe_ticket(12.0, ok=False)
    assert [set(t) for t in seen] == [set(TICKETS.labels)] * 2
    assert seen[0]["expert"] == "smollm2-generalist" and seen[1]["expert"] == "none"


# ---- access -------------------------------------------------------------------------------------

@pytest.fixture
def keyed(tmp_path):
    plain = {"root": auth.new_key(), "bot": auth.new_key()}

    def guard(access: str):
        cfg = AuthConfig(mode="keys", metrics_access=access, failed_auth_per_minute=0, keys=[
            ApiKeySpec(id="root", role="admin", hash=auth.sha256_hash(plain["root"]), rate_per_minute=0),
            ApiKeySpec(id="bot", role="ticket", hash=auth.sha256_hash(plain["bot"]), rate_per_minute=0)])
        return auth.configure(cfg, str(tmp_path), "127.0.0.1", environ={})

    return guard, plain


def status(guard, client: str, host: str, key: str | None = None, method: str = "GET", path: str = "/metrics"):
    headers = {"host": host, **({"authorization": f"Bearer {key}"} if key else {})}
    principal, refusal = guard.decide(method, path, headers, client)
    return 200 if refusal is None else refusal[0]


def test_metrics_access_loopback_default(keyed):
    make, plain = keyed
    assert AuthConfig().metrics_access == "loopback"
    g = make("loopback")
    assert status(g, "127.0.0.1", "127.0.0.1:8000") == 200, "a Prometheus on this machine needs no key"
    assert status(g, "::1", "localhost:8000") == 200
    # A loopback client asking for another name (DNS rebinding from a web page) or any remote client: admin.
    for client, host in (("127.0.0.1", "metrics.example.com"), ("10.1.2.3", "flowrouter:8000")):
        assert status(g, client, host) == 401
        assert status(g, client, host, plain["bot"]) == 403
        assert status(g, client, host, plain["root"]) == 200
    assert status(g, "127.0.0.1", "127.0.0.1", method="POST") == 401, "only reads are relaxed"
    assert status(g, "127.0.0.1", "127.0.0.1", plain["bot"], path="/v1/stats") == 200, "other paths unchanged"


def test_metrics_access_admin_and_open(keyed):
    make, plain = keyed
    g = make("admin")
    assert status(g, "127.0.0.1", "127.0.0.1") == 401
    assert status(g, "127.0.0.1", "127.0.0.1", plain["bot"]) == 403
    assert status(g, "127.0.0.1", "127.0.0.1", plain["root"]) == 200
    g = make("open")
    assert status(g, "10.1.2.3", "flowrouter:8000") == 200
    assert auth.required_role("GET", "/metrics") == "admin", "the policy's own answer is the strict one"


# ---- the Grafana dashboard ----------------------------------------------------------------------

def _exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v.get("query") for v in dash.get("templating", {}).get("list", []) if isinstance(v.get("query"), str)]
    return exprs


def test_dashboard_queries_only_series_the_service_exports():
    exprs = _exprs()
    assert len(exprs) >= 10
    exported = exported_names()
    used = set()
    for expr in exprs:
        names = set(re.findall(r"\bflowrouter_[a-zA-Z0-9_]+", expr))
        assert names, f"query reads no FlowRouter series: {expr}"
        assert names <= exported, f"{sorted(names - exported)} in {expr!r} are not exported by /metrics"
        # Anything else used as a series (a name followed by a selector or a range) is a typo or Ray's.
        selectors = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expr))
        assert selectors <= exported, f"{sorted(selectors - exported)} in {expr!r}"
        used |= names
    # The dashboard shows every family it was made for.
    for s in EXPORTED:
        assert set(s.sample_names()) & used, f"the dashboard shows nothing of {s.name}"
    assert any("by (expert)" in e for e in exprs) and any("histogram_quantile(0.95" in e for e in exprs)


def test_dashboard_imports_into_grafana():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "flowrouter" and dash["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}" and p["targets"]
