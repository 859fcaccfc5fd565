"""Gate and publish logic: promotion only on a strict held-out win; the map follows; failures touch nothing."""

from __future__ import annotations

import pytest

from core.config import ModelSpec
from core.task_map import MapStore, TaskMap
from training.coevolve import TrainOptions, train
from training.gate import GateDecision, decide, publish, regenerate_map, retired_config, serving_spec, updated_config
from training.pool import JobOutcome

SERVING = ModelSpec(name="smollm2-generalist", base="smollm2-135m-instruct")


def _metrics(serving_f1, candidate_f1, s_ag=0.5, c_ag=0.5, version=3, status="ok"):
    return {"status": status, "version": version, "algorithms": {"planner": "grpo"},
            "serving": {"f1": serving_f1, "agreement": {"pairwise": s_ag}, "planner_adapter": None,
                        "scorer_adapter": None},
            "candidate": {"f1": candidate_f1, "agreement": {"pairwise": c_ag}, "planner_adapter": "/a/planner",
                          "scorer_adapter": "/a/scorer"}}


def test_gate_promotes_only_a_strict_win():
    d = decide(SERVING, _metrics(60.0, 61.5))
    assert d.promote and d.new_expert.name == "smollm2-generalist-v3" and d.new_expert.adapter == "/a/planner"
    assert d.new_expert.base == SERVING.base and "trained" in d.new_expert.description
    tie = decide(SERVING, _metrics(60.0, 60.0))
    assert not tie.promote and tie.new_expert is None and "keeping smollm2-generalist" in tie.reason
    assert not decide(SERVING, _metrics(60.0, 59.0)).promote
    assert not decide(SERVING, _metrics(60.0, 60.5), min_improvement=1.0).promote
    assert decide(SERVING, _metrics(60.0, 61.5), min_improvement=1.0).promote
    failed = decide(SERVING, {"status": "failed", "error": "ValueError: boom"})
    assert not failed.promote and "training failed" in failed.reason
    assert not decide(SERVING, None).promote
    assert not decide(SERVING, _metrics(None, None)).promote  # --no-gate: never promoted


def test_scorer_promotion_needs_better_agreement():
    assert decide(SERVING, _metrics(60, 59, s_ag=0.5, c_ag=0.7)).promote_scorer
    assert not decide(SERVING, _metrics(60, 61, s_ag=0.5, c_ag=0.5)).promote_scorer
    d = decide(SERVING, _metrics(60, 61, s_ag=0.6, c_ag=0.4))
    assert d.promote and not d.promote_scorer


def _map(routes, fallback="smollm2-generalist", version="m1"):
    return TaskMap(version=version, routes=routes, fallback=fallback)


def test_regenerated_map_moves_the_beaten_experts_routes():
    live = _map({"network": "gemma3-infra", "application": "smollm2-generalist", "database": "smollm2-apps"})
    new = regenerate_map(live, {"smollm2-generalist": "smollm2-generalist-v3"}, "training")
    assert new.routes == {"network": "gemma3-infra", "application": "smollm2-generalist-v3",
                          "database": "smollm2-apps"}
    assert new.fallback == "smollm2-generalist-v3" and new.version != live.version and new.source == "training"
    assert regenerate_map(live, {"not-routed": "x-v2"}, "training") is None


def test_updated_config_adds_the_new_expert_and_retired_config_drops_old_versions(tiny_config):
    cfg = tiny_config
    v2 = cfg.experts[0].model_copy(update={"name": "smollm2-generalist-v2", "adapter": "/old"})
    v3 = cfg.experts[0].model_copy(update={"name": "smollm2-generalist-v3", "adapter": "/new"})
    cfg.experts = [cfg.experts[0], v2, *cfg.experts[1:]]
    d = GateDecision("smollm2-generalist-v2", True, "won", 50, 60, new_expert=v3)
    new = updated_config(cfg, [d])
    names = [e.name for e in new.experts]
    assert names[:3] == ["smollm2-generalist", "smollm2-generalist-v2", "smollm2-generalist-v3"]
    v4 = v3.model_copy(update={"name": "smollm2-generalist-v4"})
    d4 = GateDecision("smollm2-generalist-v3", True, "won", 60, 61, new_expert=v4, promote_scorer=True,
                      scorer_adapter="/s", candidate_agreement=0.9)
    newer = updated_config(new, [d4])
    assert "smollm2-generalist-v2" in [e.name for e in newer.experts]  # nothing is removed before the map moves
    assert newer.scorer.model.adapter == "/s"
    # After the map routes to v4: v2 goes; the root (named by the configured map) and the beaten v3 stay.
    final = retired_config(newer, [d4], _map({"application": "smollm2-generalist-v4"}))
    names = [e.name for e in final.experts]
    assert "smollm2-generalist-v2" not in names
    assert {"smollm2-generalist", "smollm2-generalist-v3", "smollm2-generalist-v4", "smollm2-apps"} <= set(names)
    # A version the live map still routes to is never retired.
    kept = retired_config(newer, [d4], _map({"application": "smollm2-generalist-v4",
                                             "network": "smollm2-generalist-v2"}))
    assert "smollm2-generalist-v2" in [e.name for e in kept.experts]
    live_map = _map({"application": "smollm2-generalist-v3"})
    assert serving_spec(newer, live_map, "smollm2-generalist").name == "smollm2-generalist-v3"
    assert serving_spec(newer, None, "smollm2-generalist").name == "smollm2-generalist"
    with pytest.raises(KeyError):
        serving_spec(newer, None, "nobody")


class FakePublisher:
    """The live service as the gate sees it: a config, a map store, and a record of every call."""

    def __init__(self, cfg, tmp_path, fail_deploy=False):
        self.cfg = cfg
        self.store = MapStore(tmp_path / "maps")
        self.store.publish(_map({t: "smollm2-generalist" for t in ("application", "network")}, version="live-1"))
        self.calls: list[str] = []
        self.fail_deploy = fail_deploy

    def live_config(self):
        self.calls.append("live_config")
        return self.cfg.model_copy(deep=True)

    def current_map(self):
        return self.store.current()

    def deploy(self, cfg):
        self.calls.append("deploy")
        if self.fail_deploy:
            raise RuntimeError("serve.run failed")
        self.deployed = [e.name for e in cfg.experts]
        self.cfg = cfg

    def publish_map(self, m):
        self.calls.append("publish_map")
        return self.store.publish(m).model_dump()


def test_publish_deploys_then_switches_the_map(tiny_config, tmp_path):
    pub = FakePublisher(tiny_config, tmp_path)
    d = decide(tiny_config.experts[0], _metrics(50.0, 55.0, version=7))
    report = publish([d], pub)
    assert pub.calls == ["live_config", "deploy", "publish_map"]
    assert report.deployed == ["smollm2-generalist-v7"] and report.previous_map == "live-1"
    live = pub.store.current()
    assert live.routes == {"application": "smollm2-generalist-v7", "network": "smollm2-generalist-v7"}
    assert "smollm2-generalist-v7" in pub.deployed and "smollm2-generalist" in pub.deployed
    # The beaten expert is still deployed: rollback is one map step back.
    assert pub.store.rollback().version == "live-1"


def test_publish_retires_superseded_versions_only_after_the_map_moved(tiny_config, tmp_path):
    cfg = tiny_config.model_copy(deep=True)
    v1 = cfg.experts[0].model_copy(update={"name": "smollm2-generalist-v1", "adapter": "/v1"})
    v2 = cfg.experts[0].model_copy(update={"name": "smollm2-generalist-v2", "adapter": "/v2"})
    cfg.experts = [cfg.experts[0], v1, v2, *cfg.experts[1:]]
    pub = FakePublisher(cfg, tmp_path)
    pub.store.publish(_map({t: "smollm2-generalist-v2" for t in ("application", "network")},
                           fallback="smollm2-generalist-v2", version="live-2"))
    report = publish([decide(v2, _metrics(50.0, 55.0, version=3))], pub)
    assert pub.calls == ["live_config", "deploy", "publish_map", "deploy"]
    assert report.deployed == ["smollm2-generalist-v3"] and report.retired == ["smollm2-generalist-v1"]
    assert "smollm2-generalist-v1" not in pub.deployed
    assert {"smollm2-generalist", "smollm2-generalist-v2", "smollm2-generalist-v3"} <= set(pub.deployed)
    assert set(pub.store.current().routes.values()) == {"smollm2-generalist-v3"}


def test_no_promotion_or_failed_deploy_leave_the_map_alone(tiny_config, tmp_path):
    pub = FakePublisher(tiny_config, tmp_path)
    report = publish([decide(tiny_config.experts[0], _metrics(50.0, 50.0))], pub)
    assert pub.calls == [] and "unchanged" in report.note and pub.store.current().version == "live-1"
    broken = FakePublisher(tiny_config, tmp_path / "b", fail_deploy=True)
    with pytest.raises(RuntimeError, match="serve.run"):
        publish([decide(tiny_config.experts[0], _metrics(50.0, 60.0))], broken)
    assert "publish_map" not in broken.calls and broken.store.current().version == "live-1"


def test_a_failed_training_job_leaves_cluster_and_map_untouched(tiny_config, tmp_path):
    pub = FakePublisher(tiny_config, tmp_path)
    seen = {}

    def failing_runner(jobs, cfg, opts):
        seen["jobs"] = jobs
        return {name: JobOutcome(name, False, error="RuntimeError: out of memory") for name, _ in jobs}

    report = train(tiny_config, ["smollm2-generalist"], TrainOptions(out_root=str(tmp_path / "out"),
                                                                      show_progress=False),
                   publisher=pub, runner=failing_runner)
    assert seen["jobs"][0][0] == "smollm2-generalist"
    assert "deploy" not in pub.calls and "publish_map" not in pub.calls
    assert pub.store.current().version == "live-1" and len(pub.store.history()) == 1
    assert not report.decisions[0]["promote"] and "training failed" in report.decisions[0]["reason"]
    assert "nothing was published" in report.published["note"]

    # One job fails, the other wins: only the winner is published.
    def mixed_runner(jobs, cfg, opts):
        return {"smollm2-generalist": JobOutcome("smollm2-generalist", True, _metrics(40.0, 45.0, version=2)),
                "smollm2-apps": JobOutcome("smollm2-apps", False, error="boom")}

    pub2 = FakePublisher(tiny_config, tmp_path / "2")
    report = train(tiny_config, ["smollm2-generalist", "smollm2-apps"],
                   TrainOptions(out_root=str(tmp_path / "out"), show_progress=False), publisher=pub2,
                   runner=mixed_runner)
    assert pub2.calls.count("deploy") == 1 and report.published["deployed"] == ["smollm2-generalist-v2"]
    assert [d["promote"] for d in report.decisions] == [True, False]
