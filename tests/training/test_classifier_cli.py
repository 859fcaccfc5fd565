"""`flowrouter train classifier` and `leaderboard classifier --adapter` refuse bad requests before any work."""

from __future__ import annotations

import pytest

from cluster.cli import main


@pytest.mark.parametrize("argv, message", [
    (["classifier", "--publish", "--no-gate"], "--publish needs the gate"),
    (["classifier", "--publish", "--dataset", "owl-bench"], "--publish needs the service's own examples"),
    (["classifier", "--rollback", "--publish"], "--rollback trains nothing"),
    (["classifier", "--steps", "0"], "--steps must be >= 1"),
    (["classifier", "--training", "missing.yaml"], "training settings not found"),
    ([], "flowrouter train classifier"),  # neither --expert nor the classifier
])
def test_train_classifier_cli_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *argv]) == 2
    assert message in capsys.readouterr().err


def test_publish_and_rollback_without_a_running_service_fail_fast(tmp_path, capsys):
    import yaml

    from core.config import load_config

    cfg = load_config()
    cfg.serve.state_dir = str(tmp_path / "state")
    cfg.serve.port = 1  # nothing listens there
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"source"})))
    for flag in ("--publish", "--rollback"):
        assert main(["train", "classifier", "--config", str(path), flag, "--out", str(tmp_path / "out")]) == 2
        assert "no FlowRouter service answers" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was trained


def test_leaderboard_classifier_refuses_a_folder_without_an_adapter(tmp_path, capsys):
    rows = "text,task\n" + "".join(f"disk full on node {i},storage\nvpn drops {i},network\n" for i in range(4))
    (tmp_path / "train.csv").write_text(rows)
    (tmp_path / "test.csv").write_text(rows)
    assert main(["leaderboard", "classifier", "--train", str(tmp_path / "train.csv"), "--test",
                 str(tmp_path / "test.csv"), "--adapter", str(tmp_path), "--quiet"]) == 2
    assert "no peft adapter there" in capsys.readouterr().err
