"""End to end: a trained adapter that wins its gate goes live on a running service, one that loses does not.

It runs on the session `slim_service` (one Planner expert, one Scorer replica, started through `flowrouter serve`); a
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

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]

TICKET = {"title": "Disk almost full on node-3", "description": "root filesystem at 95% and growing"}


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


def _ticket(svc):
    return svc.post("/v1/tickets", params={"candidates": 1, "cache": "false"}, json=TICKET, timeout=600,
                    headers={"Authorization": f"Bearer {svc.keys['ticket']}"})


def test_loser_changes_nothing_winner_goes_live_and_rolls_back(slim_service, adapter):
    from cluster.publish import ServicePublisher
    from training.gate import decide, publish

    svc = slim_service
    cfg = svc.cfg
    pub = ServicePublisher(cfg, api_key=svc.keys["admin"])
    pub.check()
    serving = cfg.expert("smollm2-generalist")
    before = svc.get("/v1/map").json()["current"]

    # The adapter does not beat the serving one: nothing is deployed, the map stays.
    report = publish([decide(serving, _metrics(50.0, 49.0, adapter))], pub)
    assert report.deployed == [] and svc.get("/v1/map").json()["current"]["version"] == before["version"]

    # It wins: deployed as smollm2-generalist-v7, the map switches, while tickets keep flowing.
    failures, done, stop = [], [], threading.Event()

    def stream():
        while not stop.is_set():
            try:
                r = _ticket(svc)
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
    health = svc.get("/healthz").json()
    assert {"smollm2-generalist", "smollm2-generalist-v7"} <= set(health["experts"])
    live = svc.get("/v1/map").json()["current"]
    assert live["version"] == report.map_version and set(live["routes"].values()) == {"smollm2-generalist-v7"}
    r = _ticket(svc)
    assert r.status_code == 200 and r.json()["expert"] == "smollm2-generalist-v7"

    # The beaten expert is still deployed: rollback routes to it again at once.
    assert svc.post("/v1/map/rollback", timeout=60).status_code == 200
    r = _ticket(svc)
    assert r.status_code == 200 and r.json()["expert"] == "smollm2-generalist"
