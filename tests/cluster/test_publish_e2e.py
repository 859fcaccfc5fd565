"""End to end: a trained adapter that wins its gate goes live on a running service, one that loses does not.

A small service (one Planner expert, one Scorer replica) is started through `flowrouter serve`; a
real adapter is trained (one tiny GRPO step); the gate's verdict is fixed by the metrics handed to
`publish` so both branches are exercised deterministically. While the new expert is deployed and the
map switched, tickets keep flowing and none may fail; afterwards tickets route to the new expert;
`POST /v1/map/rollback` routes them back to the old one, which stayed deployed.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]

TASKS = ("network", "database", "kubernetes", "storage", "access", "hardware", "application", "security")
TICKET = {"title": "Disk almost full on node-3", "description": "root filesystem at 95% and growing"}


@pytest.fixture(scope="module")
def small_service(tmp_path_factory, service_factory):
    d = tmp_path_factory.mktemp("svc")

    def configure(cfg):
        cfg.experts = [cfg.expert("smollm2-generalist")]
        (d / "map.yaml").write_text(yaml.safe_dump({"version": "one-expert", "fallback": "smollm2-generalist",
                                                    "routes": {t: "smollm2-generalist" for t in TASKS}}))
        cfg.map = str(d / "map.yaml")
        cfg.scorer.model.replicas = 1
        cfg.planner.max_new_tokens = 48

    with service_factory(d, configure) as svc:
        yield svc.cfg, svc.url


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A real Planner adapter: one GRPO step of SmolLM2 with a real Scorer reward."""
    from core.config import load_config
    from core.training_config import PlannerRLConfig
    from experts.engines.transformers_engine import TransformersEngine
    from experts.engines.weights import resolve_weights
    from experts.planner import Planner
    from experts.scorer import Scorer
    from training.planner_rl import train_planner

    cfg = load_config()
    weights = resolve_weights("smollm2-135m-instruct")
    engine = TransformersEngine(weights, chat=True, threads=1)
    prompt = Planner(cfg.experts[0], engine, cfg.planner).prompt(TICKET["title"], None)
    out = tmp_path_factory.mktemp("adapter") / "planner"
    train_planner(weights=weights, init_adapter=None, out_dir=out, rows=[{"prompt": prompt, "ticket": TICKET["title"]}],
                  scorer=Scorer(engine, cfg.scorer.dimensions),
                  cfg=PlannerRLConfig(num_generations=2, max_completion_length=16, ppo_epochs=1, learning_rate=1e-3),
                  seed=0, steps=1)
    return str(out)


def _metrics(serving_f1, candidate_f1, planner_adapter):
    return {"status": "ok", "version": 7, "algorithms": {"planner": "grpo"},
            "serving": {"f1": serving_f1, "agreement": {"pairwise": 0.5}, "scorer_adapter": None},
            "candidate": {"f1": candidate_f1, "agreement": {"pairwise": 0.5}, "planner_adapter": planner_adapter,
                          "scorer_adapter": None}}


def _ticket(url):
    return httpx.post(f"{url}/v1/tickets", params={"candidates": 1, "cache": "false"}, json=TICKET, timeout=600)


def test_loser_changes_nothing_winner_goes_live_and_rolls_back(small_service, adapter):
    from cluster.publish import ServicePublisher
    from training.gate import decide, publish

    cfg, url = small_service
    pub = ServicePublisher(cfg)
    pub.check()
    serving = cfg.expert("smollm2-generalist")
    before = httpx.get(f"{url}/v1/map").json()["current"]

    # The adapter does not beat the serving one: nothing is deployed, the map stays.
    report = publish([decide(serving, _metrics(50.0, 49.0, adapter))], pub)
    assert report.deployed == [] and httpx.get(f"{url}/v1/map").json()["current"]["version"] == before["version"]

    # It wins: deployed as smollm2-generalist-v7, the map switches, while tickets keep flowing.
    failures, done, stop = [], [], threading.Event()

    def stream():
        while not stop.is_set():
            try:
                r = _ticket(url)
                if r.status_code == 200:
                    done.append(r.json()["expert"])
                else:
                    failures.append(f"{r.status_code}: {r.text[:300]}")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

    worker = threading.Thread(target=stream, daemon=True)
    worker.start()
    try:
        report = publish([decide(serving, _metrics(50.0, 55.0, adapter))], pub)
        time.sleep(2)
    finally:
        stop.set()
        worker.join(timeout=900)
    assert report.deployed == ["smollm2-generalist-v7"] and report.previous_map == before["version"]
    assert not failures, f"requests failed while the new expert was deployed: {failures}"
    assert done, "no ticket completed during the switch"
    health = httpx.get(f"{url}/healthz").json()
    assert set(health["experts"]) == {"smollm2-generalist", "smollm2-generalist-v7"}
    live = httpx.get(f"{url}/v1/map").json()["current"]
    assert live["version"] == report.map_version and set(live["routes"].values()) == {"smollm2-generalist-v7"}
    r = _ticket(url)
    assert r.status_code == 200 and r.json()["expert"] == "smollm2-generalist-v7"

    # The beaten expert is still deployed: rollback routes to it again at once.
    assert httpx.post(f"{url}/v1/map/rollback").status_code == 200
    r = _ticket(url)
    assert r.status_code == 200 and r.json()["expert"] == "smollm2-generalist"
