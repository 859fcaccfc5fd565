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
