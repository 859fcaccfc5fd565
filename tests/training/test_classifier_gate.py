"""The classifier adapter's gate and publish step, and one fake job through the versioned output (no real model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import load_config
from training.classifier_job import decide, publish, run_classifier_job, set_adapter
from training.gate import PublishError


def _metrics(serving_acc, candidate_acc, mode="cascade", tasks=None, adapter="/out/classifier-smollm2/v0003/adapter"):
    return {"status": "ok", "version": 3, "gate_mode": mode, "tasks": tasks or ["network", "database"],
            "serving": {mode: {"accuracy": serving_acc}}, "candidate": {mode: {"accuracy": candidate_acc},
                                                                        "adapter": adapter}}


def test_gate_promotes_only_a_strict_gain_beyond_the_margin():
    spec = load_config().classifier.model
    assert decide(spec, _metrics(0.80, 0.85)).promote
    d = decide(spec, _metrics(0.80, 0.80))
    assert not d.promote and "does not beat" in d.reason  # a tie keeps what serves
    assert not decide(spec, _metrics(0.80, 0.82), min_improvement=2.0).promote  # +2.0 points is not > 2
    d = decide(spec, _metrics(0.80, 0.8201), min_improvement=2.0)
    assert d.promote and d.adapter.endswith("v0003/adapter") and d.serving_accuracy == 0.80
    assert not decide(spec, _metrics(0.5, 0.9, mode="llm+retrieval") | {"gate_mode": "cascade"}).promote  # no figure
    assert not decide(spec, {"status": "failed", "error": "boom"}).promote
    assert "training failed: boom" in decide(spec, {"status": "failed", "error": "boom"}).reason
    no_eval = _metrics(0.8, 0.9)
    no_eval["serving"] = None
    assert "gate off" in decide(spec, no_eval).reason


class FakePublisher:
    def __init__(self, cfg, replicas_switch=True):
        self.cfg, self.deployed, self.replicas_switch = cfg, [], replicas_switch

    def live_config(self):
        return self.cfg

    def deploy(self, cfg):
        self.deployed.append(cfg)
        if self.replicas_switch:
            self.cfg = cfg

    def classifier_info(self):
        return [{"adapter": self.cfg.classifier.model.adapter, "pid": 1}]


def _tasks():
    from router.examples import load_tasks

    return [t.name for t in load_tasks(load_config().tasks.tasks)]


def test_publish_sets_only_the_classifier_adapter_and_checks_the_replicas():
    cfg = load_config()
    pub = FakePublisher(cfg)
    loser = decide(cfg.classifier.model, _metrics(0.8, 0.7, tasks=_tasks()))
    r = publish(loser, pub)
    assert not r.published and pub.deployed == [] and "not promoted" in r.note
    winner = decide(cfg.classifier.model, _metrics(0.8, 0.9, tasks=_tasks(), adapter="/a/v0001/adapter"))
    r = publish(winner, pub)
    assert r.published and r.adapter == "/a/v0001/adapter" and r.previous_adapter is None
    [new] = pub.deployed
    assert new.classifier.model.adapter == "/a/v0001/adapter"
    # Nothing else in the app changes: the same experts, scorer, map and classifier settings.
    a, b = cfg.model_dump(mode="json"), new.model_dump(mode="json")
    a["classifier"]["model"].pop("adapter"), b["classifier"]["model"].pop("adapter")
    assert a == b
    assert r.serving == [{"adapter": "/a/v0001/adapter", "pid": 1}]
    assert "already serves" in publish(winner, pub).note and len(pub.deployed) == 1
    back = set_adapter(pub, None)
    assert back.published and back.previous_adapter == "/a/v0001/adapter" and pub.cfg.classifier.model.adapter is None


def test_publish_refuses_other_tasks_and_replicas_that_did_not_switch():
    cfg = load_config()
    other = decide(cfg.classifier.model, _metrics(0.5, 0.9, tasks=["OS", "network"]))
    pub = FakePublisher(cfg)
    with pytest.raises(PublishError, match="trained on the tasks"):
        publish(other, pub)
    assert pub.deployed == []
    stuck = FakePublisher(cfg, replicas_switch=False)
    with pytest.raises(PublishError, match="did not switch"):
        publish(decide(cfg.classifier.model, _metrics(0.5, 0.9, tasks=_tasks())), stuck)


def test_a_job_writes_a_versioned_adapter_report_and_plot(tmp_path, monkeypatch, fake_engine_cls, embedder):
    """The whole job with a scripted LLM and a stand-in SFT stage: the adapter 'knows' every dev label, the
    serving LLM is uniform, so the gate sees the gain; the output follows training/artifacts.py."""
    import training.classifier_job as job
    from core.training_config import TrainingConfig
    from router.examples import load_examples
    from training.planner_rl import StageResult

    cfg = load_config()
    cfg.training = TrainingConfig.model_validate({"classifier_sft": {"gate_mode": "llm+retrieval", "steps": 2}})
    gold = {q.text: q.task for q in load_examples(cfg.tasks.examples)}

    def oracle(prompt, labels):
        ticket = prompt.rsplit("Ticket: ", 1)[1].split("</u>")[0]
        task = next((t for text, t in gold.items() if text.startswith(ticket.rstrip(" …")[:60])), None)
        return {lab: 0.9 if lab == f" {task}" else 0.1 / (len(labels) - 1) for lab in labels}

    def engine_for(spec):
        engine = fake_engine_cls(label_fn=oracle if spec.adapter else None, name=spec.name)
        engine.split_continuation = lambda prompt, completion: ([1, 2, 3], 2)
        return engine

    seen = {}

    def fake_sft(*, out_dir, rows, cfg, steps, progress, **kw):
        seen["rows"], seen["steps"] = rows, steps
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "adapter_model.safetensors").write_bytes(b"x")
        for s in (1, 2):
            progress("classifier SFT", s, 2)
        return StageResult(adapter=str(out_dir), steps=2, seconds=0.1, history=[{"step": 1, "loss": 2.0},
                                                                                {"step": 2, "loss": 1.0}],
                           step_seconds=[0.05, 0.05], data={"rows": len(rows), "too_long": 0})

    monkeypatch.setattr(job, "build_engine", engine_for)
    monkeypatch.setattr(job, "train_classifier_sft", fake_sft)
    monkeypatch.setattr(job, "get_embedder", lambda name: embedder)
    monkeypatch.setattr(job, "resolve_weights", lambda base: base)
    monkeypatch.setenv("FLOWROUTER_HOME", str(tmp_path / "home"))  # evaluator caches stay out of the user's
    stages = []
    payload = {"config": cfg.model_dump(mode="json", exclude={"source"}),
               "serving": cfg.classifier.model.model_dump(mode="json"), "out_root": str(tmp_path / "out"),
               "steps": None, "evaluate": True}
    m = run_classifier_job(payload, lambda stage, done, total: stages.append(stage))
    assert m["status"] == "ok" and m["version"] == 1
    final = tmp_path / "out" / "classifier-smollm2" / "v0001"
    assert Path(m["dir"]) == final and Path(m["candidate"]["adapter"]) == final / "adapter"
    assert (final / "report.png").stat().st_size > 5000 and json.loads((final / "metrics.json").read_text())["version"] == 1
    meta = json.loads((final / "adapter" / "flowrouter-adapter.json").read_text())
    assert meta["kind"] == "classifier" and meta["tasks"] == m["tasks"] and set(meta["train_ids"]).isdisjoint(meta["dev_ids"])
    assert len(seen["rows"]) == m["data"]["train"] and m["data"]["dev"] > 0
    task_of = {q.id: q.task for q in load_examples(cfg.tasks.examples)}
    assert all(r["completion"] == " " + task_of[r["id"]] for r in seen["rows"])
    assert set(meta["train_ids"]) == {r["id"] for r in seen["rows"]}
    assert {"data", "dev: serving LLM", "classifier SFT", "dev: with adapter"} <= set(stages)
    d = decide(cfg.classifier.model, m)
    assert d.promote, d.reason
    assert m["candidate"]["llm+retrieval"]["accuracy"] > m["serving"]["llm+retrieval"]["accuracy"]
    assert list(m["candidate"]) == ["llm+retrieval", "cascade", "adapter"]  # the gate's mode first
    # A second run is the next version; a failing one is kept as vNNNN.failed and never counts as finished.
    monkeypatch.setattr(job, "train_classifier_sft", lambda **kw: (_ for _ in ()).throw(RuntimeError("no memory")))
    with pytest.raises(RuntimeError):
        run_classifier_job(payload)
    assert (tmp_path / "out" / "classifier-smollm2" / "v0002.failed" / "error.txt").read_text().endswith("no memory")
