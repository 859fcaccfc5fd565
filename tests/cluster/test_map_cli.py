"""`flowrouter map` against a stand-in of the service's map endpoints (same validation: TaskMap.check
and MapStore), and `leaderboard add-model --publish` refusals that need no running service."""

from __future__ import annotations

import json

import pytest
import yaml

from cluster.cli import main
from core.task_map import MapError, MapStore, TaskMap

TASKS = ["network", "database", "storage"]
EXPERTS = ["alpha", "beta"]
ADMIN, READER = "fr_admin-key", "fr_ticket-key"


class FakeService:
    """GET /v1/map, POST /v1/map (409 with the reason when refused), POST /v1/map/rollback; Bearer keys."""

    def __init__(self, tmp_path):
        self.store = MapStore(tmp_path / "maps")
        self.store.publish(TaskMap(version="m1", routes={t: "alpha" for t in TASKS}, fallback="alpha"))
        self.requests: list[tuple[str, str, str | None]] = []
        self.url = ""

    def respond(self, method, path, headers, body):
        self.requests.append((method, path, headers.get("authorization")))
        key = (headers.get("authorization") or "").removeprefix("Bearer ").strip()
        role = {ADMIN: "admin", READER: "ticket"}.get(key)
        if role is None:
            return 401, {"detail": "API key required"}
        if method == "GET":
            return 200, {"current": self.store.current().model_dump(), "history": self.store.history(),
                         "tasks": TASKS, "experts": EXPERTS}
        if role != "admin":
            return 403, {"detail": "this endpoint needs the admin role"}
        try:
            if path == "/v1/map":
                p = self.store.publish(TaskMap.model_validate(body).check(TASKS, EXPERTS))
                return 200, {"published": p.version, "map": p.model_dump()}
            r = self.store.rollback()
            return 200, {"restored": r.version, "map": r.model_dump()}
        except MapError as exc:
            return 409, {"detail": str(exc)}


@pytest.fixture
def svc(tmp_path, monkeypatch, stand_in):
    monkeypatch.delenv("FLOWROUTER_ADMIN_KEY", raising=False)
    s = FakeService(tmp_path)
    s.url = stand_in(s.respond)
    return s


def _write_map(path, version="m2", routes=None, fallback="beta", **extra):
    routes = routes if routes is not None else {"network": "beta", "database": "alpha", "storage": "beta"}
    path.write_text(yaml.safe_dump({"version": version, "routes": routes, "fallback": fallback, **extra}))
    return str(path)


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_show_and_history(svc, capsys):
    code, out, _ = _run(capsys, "map", "show", "--url", svc.url, "--key", READER)
    assert code == 0 and "map m1" in out and "network" in out and "alpha" in out
    code, out, _ = _run(capsys, "map", "history", "--url", svc.url, "--key", READER, "--json")
    assert code == 0 and json.loads(out)[0]["version"] == "m1"


def test_publish_prints_the_diff_and_sends_the_admin_key(svc, capsys, tmp_path):
    code, out, err = _run(capsys, "map", "publish", _write_map(tmp_path / "m2.yaml"), "--url", svc.url,
                          "--admin-key", ADMIN)
    assert code == 0, err
    assert "network: alpha -> beta" in out and "unknown (fallback): alpha -> beta" in out
    assert svc.store.current().version == "m2"
    assert ("POST", "/v1/map", f"Bearer {ADMIN}") in svc.requests


def test_admin_key_from_the_environment(svc, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWROUTER_ADMIN_KEY", ADMIN)
    code, _, err = _run(capsys, "map", "publish", _write_map(tmp_path / "m2.yaml"), "--url", svc.url)
    assert code == 0, err
    assert svc.store.current().version == "m2"


@pytest.mark.parametrize("routes, fallback, reason", [
    ({"network": "gamma", "database": "alpha", "storage": "alpha"}, "alpha", "experts not deployed: ['gamma']"),
    ({"network": "alpha", "database": "alpha"}, "alpha", "tasks without an expert: ['storage']"),
    ({"network": "alpha", "database": "alpha", "storage": "alpha", "printing": "beta"}, "alpha",
     "tasks not in the task set: ['printing']"),
    ({"network": "alpha", "database": "alpha", "storage": "alpha"}, "delta", "experts not deployed: ['delta']"),
])
def test_refused_maps_exit_2_with_the_reason(svc, capsys, tmp_path, routes, fallback, reason):
    code, out, err = _run(capsys, "map", "publish", _write_map(tmp_path / "bad.yaml", routes=routes, fallback=fallback),
                          "--url", svc.url, "--admin-key", ADMIN)
    assert code == 2 and reason in err and "live map is still m1" in err
    assert svc.store.current().version == "m1"


def test_the_service_refusal_is_shown_too(svc, capsys, tmp_path):
    """A map the local check accepts but the service refuses (a version published before): 409's reason."""
    code, _, err = _run(capsys, "map", "publish", _write_map(tmp_path / "again.yaml", version="m1"), "--url", svc.url,
                        "--admin-key", ADMIN)
    assert code == 2 and "already published" in err


@pytest.mark.parametrize("content, reason", [
    ("version: m3\nroutes: [not, a, mapping]\nfallback: alpha\n", "not a valid map"),
    ("version: m3\nroutes: {network: alpha}\nfallback: alpha\nsurprise: 1\n", "not a valid map"),
    (":: not yaml ::\n  - [", "not a valid map"),
])
def test_invalid_files_are_refused_before_sending(svc, capsys, tmp_path, content, reason):
    f = tmp_path / "broken.yaml"
    f.write_text(content)
    code, _, err = _run(capsys, "map", "publish", str(f), "--url", svc.url, "--admin-key", ADMIN)
    assert code == 2 and reason in err
    assert not [r for r in svc.requests if r[0] == "POST"]


def test_missing_file_and_keys(svc, capsys, tmp_path):
    code, _, err = _run(capsys, "map", "publish", str(tmp_path / "nope.yaml"), "--url", svc.url)
    assert code == 2 and "not found" in err
    path = _write_map(tmp_path / "m2.yaml")
    code, _, err = _run(capsys, "map", "publish", path, "--url", svc.url)
    assert code == 2 and "--admin-key" in err
    code, _, err = _run(capsys, "map", "publish", path, "--url", svc.url, "--admin-key", READER)
    assert code == 2 and "admin key" in err


def test_rollback(svc, capsys, tmp_path):
    code, _, err = _run(capsys, "map", "rollback", "--url", svc.url, "--admin-key", ADMIN)
    assert code == 2 and "no earlier map" in err
    assert _run(capsys, "map", "publish", _write_map(tmp_path / "m2.yaml"), "--url", svc.url, "--admin-key", ADMIN)[0] == 0
    code, out, err = _run(capsys, "map", "rollback", "--url", svc.url, "--admin-key", ADMIN)
    assert code == 0, err
    assert "m2 -> m1" in out and svc.store.current().version == "m1"


def test_no_service(capsys):
    code, _, err = _run(capsys, "map", "show", "--url", "http://127.0.0.1:9", "--timeout", "2")
    assert code == 2 and "no answer" in err


def test_add_model_publish_refuses_a_map_for_other_tasks(svc, capsys, tmp_path, monkeypatch):
    """A leaderboard on another task set cannot be published to this service: refused before deploying."""
    import leaderboard.runner as runner
    from core.config import ModelSpec
    from leaderboard.tasksets import MCItem, TaskInfo, TaskSet

    class Always:  # answers every MC item with A
        def format_prompt(self, system, user, assistant_prefix=""):
            return user

        def label_probs(self, prompts, labels):
            return [{lab: (0.9 if lab.strip() == "A" else 0.1 / (len(labels) - 1)) for lab in labels} for _ in prompts]

        def close(self):
            pass

    monkeypatch.setattr(runner, "default_engine_factory", lambda spec: Always())
    ts = TaskSet(name="other", tasks=[TaskInfo(name="x"), TaskInfo(name="y")],
                 items=[MCItem(id=f"{t}1", task=t, question=f"{t}?", options={"A": "a", "B": "b"}, answer=["A"])
                        for t in "xy"])
    out = tmp_path / "lb"
    runner.build_leaderboard(ts, [ModelSpec(name="alpha", base="smollm2-135m-instruct")], out,
                             runner.LeaderboardRunOptions(plots=False, progress=False))
    spec = tmp_path / "new.yaml"
    spec.write_text(yaml.safe_dump({"name": "gamma", "base": "smollm2-135m-instruct"}))
    code, _, err = _run(capsys, "leaderboard", "add-model", str(spec), "--out", str(out), "--quiet", "--no-plots",
                        "--publish", "--url", svc.url, "--admin-key", ADMIN)
    assert code == 2 and "the service serves ['database', 'network', 'storage']" in err
    assert svc.store.current().version == "m1"
