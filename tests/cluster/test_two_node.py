"""A real 2-node Ray cluster on 127.0.0.1: the app is deployed across both nodes and serves tickets.

The head (custom resource `head_node`) takes the ingress, the classifier and the planner; the
worker (`worker_node`) takes both Scorer replicas, so every ticket crosses nodes and best-of-2 is
scored on the worker. The nodes are this test's own processes (ray.cluster_utils.Cluster) and are
stopped by it; other Ray instances on the machine are never touched (no `ray stop`).
"""

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1500)]

EXPERT = "smollm2-generalist"
# Drivers we start must find nodes registered on 127.0.0.1: with this, Ray resolves "this node" to the
# loopback address instead of the machine's external IP (where no raylet of ours listens).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")  # `ray.init("auto")` reads it; keep other users' value


def _driver(address: str, code: str, timeout=300) -> str:
    script = f"import ray\nray.init(address={address!r}, _node_ip_address='127.0.0.1', log_to_driver=False)\n"
    out = subprocess.run([sys.executable, "-c", script + textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=timeout, env=dict(os.environ, **LOOPBACK_ENV))
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    saved = ADDRESS_FILE.read_text() if ADDRESS_FILE.exists() else None
    common = {"node_ip_address": "127.0.0.1", "include_dashboard": False,
              "object_store_memory": 200 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "resources": {"head_node": 1}, **common})
    try:
        worker = cluster.add_node(num_cpus=2, resources={"worker_node": 1}, **common)
        yield cluster, worker
    finally:
        try:
            _driver(cluster.address, "from ray import serve\nserve.shutdown()\n", timeout=180)
        except Exception as exc:  # the nodes go down next anyway
            print(f"serve.shutdown failed: {exc}")
        cluster.shutdown()
        if saved is None:
            ADDRESS_FILE.unlink(missing_ok=True)
        else:
            ADDRESS_FILE.write_text(saved)


def test_app_spans_two_nodes_and_serves_tickets(two_nodes, tmp_path, service_factory):
    from core.workflow import parse_mermaid

    cluster, worker = two_nodes

    def configure(cfg):
        task_map = yaml.safe_load(open(cfg.map))
        task_map.update(version="two-node-1", fallback=EXPERT, routes={t: EXPERT for t in task_map["routes"]})
        (tmp_path / "map.yaml").write_text(yaml.safe_dump(task_map))
        cfg.map = str(tmp_path / "map.yaml")
        cfg.experts = [cfg.expert(EXPERT)]
        on_head = {"head_node": 0.01}
        cfg.classifier.model.resources = on_head
        cfg.experts[0].resources = on_head
        cfg.scorer.model.replicas = 2
        cfg.scorer.model.resources = {"worker_node": 0.01}
        cfg.planner.candidates = 2
        cfg.planner.max_new_tokens = 48
        cfg.serve.proxy_location = "HeadOnly"  # both nodes share 127.0.0.1: one proxy, one port

    with service_factory(tmp_path, configure, address=cluster.address, env=LOOPBACK_ENV) as svc:
        _serves_on_both_nodes(svc.url, cluster, worker, parse_mermaid)


def _serves_on_both_nodes(url, cluster, worker, parse_mermaid):
    assert httpx.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
    tickets = [{"title": "Disk 97% full on db-01", "description": "postgres cannot write WAL"},
               {"title": "VPN tunnel to the Lyon office is down", "description": "branch users cannot reach intranet"}]
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda t: httpx.post(f"{url}/v1/tickets", json=t, timeout=900), tickets))
    for r in responses:
        assert r.status_code == 200, r.text
        result = r.json()
        parse_mermaid(result["workflow"]["mermaid"])
        assert result["expert"] == EXPERT and len(result["candidates"]) >= 1
        assert all(1 <= c["scores"]["overall"] <= 5 for c in result["candidates"])

    placement = json.loads(_driver(cluster.address, """
        import json
        from ray.util import state  # noqa: F401  (state API needs the dashboard; use the GCS table)
        actors = ray._private.state.state.actor_table(None)
        nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
        out = [{"class": a["ActorClassName"], "name": a.get("Name", ""), "state": a["State"],
                "worker": "worker_node" in nodes.get(a["Address"]["NodeID"], {})}
               for a in actors.values() if a["State"] == "ALIVE"]
        print(json.dumps(out))
    """).strip().splitlines()[-1])
    replicas = [a for a in placement if "ServeReplica" in a["class"] or a["name"].startswith("SERVE_REPLICA")]
    scorers = [a for a in replicas if "scorer" in a["name"]]
    others = [a for a in replicas if "scorer" not in a["name"]]
    assert len(scorers) == 2 and all(a["worker"] for a in scorers), placement
    assert others and not any(a["worker"] for a in others), placement
    assert worker.node_id != cluster.head_node.node_id
