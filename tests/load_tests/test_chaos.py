"""The pure pieces of the chaos run: the map it publishes, what counts as lost, how kills are judged."""

import json

import pytest
import yaml

from core.config import DEFAULT_CONFIG, resolve_paths
from load_tests import chaos

LIVE = {"current": {"version": "starter-1", "fallback": "a", "routes": {"network": "a", "storage": "b"}},
        "experts": ["a", "b", "c"]}


def _summary(**kw):
    s = {"accepted": 5, "lost": 0, "failed": 0, "errors": 0, "submit_p95_ms": 120.0,
         "kills": {"planner-": 3, "scorer": 3}, "kill_rounds": 3, "kill_rounds_expected": 3, "published": "chaos-x"}
    return s | kw


def test_chaos_map_is_a_new_version_with_one_route_moved():
    new = chaos.chaos_map(LIVE, "chaos-abc")
    assert new["version"] == "chaos-abc" and new["fallback"] == "a"
    assert set(new["routes"]) == set(LIVE["current"]["routes"])
    moved = [t for t in new["routes"] if new["routes"][t] != LIVE["current"]["routes"][t]]
    assert len(moved) == 1 and new["routes"][moved[0]] in LIVE["experts"]
    assert LIVE["current"]["routes"] == {"network": "a", "storage": "b"}, "the live map is not modified"


def test_chaos_map_with_one_expert_keeps_routes():
    live = {"current": {"version": "v", "fallback": "a", "routes": {"network": "a"}}, "experts": ["a"]}
    assert chaos.chaos_map(live, "v2")["routes"] == {"network": "a"}


def test_lost_is_accepted_but_not_terminal():
    final = {"t1": "done", "t2": "failed", "t3": "running", "t4": None}
    assert chaos.lost_tickets(["t1", "t2", "t3", "t4", "t5"], final) == ["t3", "t4", "t5"]


def test_kill_rounds_expected():
    assert chaos.kill_rounds_expected(60, 60) == 0  # a kill at the very end would hit nothing in flight
    assert chaos.kill_rounds_expected(61, 60) == 1
    assert chaos.kill_rounds_expected(50, 12) == 4
    assert chaos.kill_rounds_expected(50, 0) == 0


def test_server_pid_names_the_missing_file(tmp_path):
    (tmp_path / "server-8123.json").write_text(json.dumps({"pid": 4242}))
    assert chaos.server_pid(tmp_path, "http://127.0.0.1:8123") == 4242
    with pytest.raises(SystemExit, match="server-8124.json.*--state-dir"):
        chaos.server_pid(tmp_path, "http://127.0.0.1:8124/")


def test_default_state_dir_follows_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWROUTER_HOME", str(tmp_path))
    assert chaos.default_state_dir() == tmp_path / "state"
    raw = resolve_paths(yaml.safe_load(DEFAULT_CONFIG.read_text()), DEFAULT_CONFIG.parent)
    raw["serve"]["state_dir"] = str(tmp_path / "elsewhere")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert chaos.default_state_dir(str(cfg)) == tmp_path / "elsewhere"


def test_judge_passes_a_clean_run_and_names_each_miss():
    assert all(ok for ok, _ in chaos.judge(_summary()))
    cases = {"lost": _summary(lost=1), "failed": _summary(failed=2), "submit errors": _summary(errors=1),
             "submit p95": _summary(submit_p95_ms=5000.0), "kill rounds": _summary(kills={"planner-": 3, "scorer": 1}),
             "map published": _summary(published=None), "accepted": _summary(accepted=0)}
    for what, s in cases.items():
        failed = [line for ok, line in chaos.judge(s) if not ok]
        assert len(failed) == 1 and failed[0].startswith(what), (what, failed)
    assert not all(ok for ok, _ in chaos.judge(_summary(submit_p95_ms=None)))


def test_report_prints_lost(capsys):
    assert chaos.report(_summary()) == 0
    assert chaos.report(_summary(lost=2)) == 1
    out = capsys.readouterr().out
    assert "lost: 0" in out and "lost: 2" in out and "verdict: FAIL" in out
