"""`flowrouter train` refuses bad requests before any training starts, naming the problem."""

from __future__ import annotations

import pytest

from cluster.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--expert", "nobody", "--local", "--quiet"], "no expert 'nobody'"),
    (["--expert", "smollm2-generalist", "--iterations", "0"], "--iterations must be >= 1"),
    (["--expert", "smollm2-generalist", "--queries", "not-a-file"], "--queries takes a number or a query file"),
    (["--expert", "smollm2-generalist", "--publish", "--no-gate"], "--publish needs the gate"),
    (["--expert", "smollm2-generalist", "--training", "missing.yaml"], "training settings not found"),
])
def test_train_cli_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *argv, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_training_file_is_validated(tmp_path, capsys):
    bad = tmp_path / "t.yaml"
    bad.write_text("planner_rl:\n  algorithm: ppo\n")
    assert main(["train", "--expert", "smollm2-generalist", "--training", str(bad)]) == 2
    assert "algorithm" in capsys.readouterr().err
    good = tmp_path / "g.yaml"
    good.write_text("cases: runbooks\nplanner_rl:\n  num_generations: 2\n")
    from cluster.commands.train import load_training

    t = load_training(good)
    assert t.cases == str(tmp_path / "runbooks") and t.planner_rl.num_generations == 2


def test_publish_without_a_running_service_fails_fast(tmp_path, capsys):
    import yaml

    from core.config import load_config

    cfg = load_config()
    cfg.serve.state_dir = str(tmp_path / "state")
    cfg.serve.port = 1  # nothing listens there
    path = tmp_path / "c.yaml"
    raw = cfg.model_dump(mode="json", exclude={"source"})
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", "--expert", "smollm2-generalist", "--config", str(path), "--publish"]) == 2
    assert "no FlowRouter service answers" in capsys.readouterr().err


def test_every_training_field_is_described_and_in_the_service_config():
    from core import training_config as t
    from core.config import FlowRouterConfig, load_config

    for model in (t.TrainingConfig, t.PlannerRLConfig, t.ScorerDPOConfig, t.PlannerCorrectionsConfig, t.GateConfig,
                  t.LoraSettings):
        missing = [n for n, f in model.model_fields.items() if not f.description]
        assert not missing, f"{model.__name__} fields without description: {missing}"
    assert FlowRouterConfig.model_fields["training"].description
    cfg = load_config()
    assert cfg.training.planner_rl.algorithm == "grpo" and cfg.training.scorer_dpo.algorithm == "dpo"
    assert cfg.training.planner_rl.beta > 0  # the KL term to the reference policy is on


def test_dry_run_shows_a_rejected_then_corrected_ticket_as_a_pair_and_trains_nothing(tmp_path, capsys):
    """The ticket store the CLI reads (the service's state dir): its rejected-then-edited ticket is a
    correction pair (the operator's workflow over the rejected candidate) and an RL query; an accepted one
    only a query; a rejected one without a correction only a negative."""
    import json

    import yaml

    from core.config import load_config
    from core.schemas import WorkflowOut
    from core.workflow import linear_workflow
    from deployments.ticket_store import TicketStore
    from tests.training.conftest import tiny_training

    cfg = load_config()
    cfg.serve.state_dir = str(tmp_path / "state")
    cfg.training = cfg.training.model_validate(tiny_training())
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"source"})))
    store = TicketStore(tmp_path / "state" / "tickets.sqlite")

    def served(tid, title, steps):
        store.accept(tid, {"title": title, "description": ""}, {})
        store.complete(tid, {"expert": "smollm2-generalist", "best_index": 0, "candidates": [
            {"workflow": WorkflowOut.of(linear_workflow(steps)).model_dump(mode="json")}]})

    served("ok", "Disk almost full on node-3", ["Check disk usage with df -h", "Delete old images"])
    served("fixed", "PVC data-0 almost full", ["Restart the kubelet", "Reboot the node"])
    served("bad", "Queue consumers lag", ["Reboot everything"])
    store.add_feedback("ok", "accept")
    store.add_feedback("fixed", "reject")
    correction = linear_workflow(["Check the PVC usage", "Expand the persistent volume claim"])
    store.add_feedback("fixed", "edit", 0, workflow={"steps": [s.model_dump(mode="json") for s in correction.steps]})
    store.add_feedback("bad", "reject")

    out = tmp_path / "out"
    assert main(["train", "--expert", "smollm2-generalist", "--config", str(path), "--dry-run", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "operator feedback from" in captured.err
    [plan] = json.loads(captured.out)
    assert plan["expert"] == "smollm2-generalist" and plan["holdout"]
    assert plan["queries"] == {"runbook": 1, "feedback": 1, "correction": 2}
    assert plan["feedback_verdicts"] == {"accept": 1, "edit": 1, "reject": 1}
    [pair] = plan["corrections"]
    assert pair["ticket_id"] == "fixed" and pair["kind"] == "edit" and pair["rl_query"]
    assert "Expand the persistent volume claim" in pair["chosen"] and "Reboot the node" in pair["rejected"]
    assert plan["negatives"] == ["ticket:bad"]
    assert not out.exists()  # nothing trained, nothing written
