"""Model lifecycle end to end: a new model arrives while tickets flow.

The session `slim_service` (one Planner expert, one Scorer replica, API keys on: this test changes what
the app serves, so it does not use the session `service`) runs. A leaderboard over the service's own
eight tasks holds results for the deployed expert. `flowrouter leaderboard add-model SPEC --publish`
adds a SmolLM2 expert with another system prompt: only it is evaluated (a scripted engine answers the
MC items, so it wins storage and database and loses the rest: the evaluation is not what is tested
here), then the real thing happens: the expert is deployed into the running app (cluster/deploy.py,
serve.run in place) and the regenerated map is published, while two threads keep posting tickets.
Checks: zero failed requests, every answer routed by the map version it reports, tickets now reach
the new expert for the tasks it won, and `flowrouter map rollback` restores the old routing.
"""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest
import yaml

from cluster.cli import main
from core.paths import STARTER_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

OLD, NEW = "smollm2-generalist", "smollm2-oncall"
WON = ("storage", "database")


@pytest.fixture
def slim(slim_service):
    from router.examples import load_tasks

    svc = slim_service
    return {"url": svc.url, "config": str(svc.config_path), "cfg": svc.cfg, "keys": svc.keys,
            "tasks": [t.name for t in load_tasks(svc.cfg.tasks.tasks)]}


class ScriptedEngine:
    """Answers an MC item right (option A) when its task is in `knows`, wrong (B) otherwise."""

    def __init__(self, knows):
        self.knows = set(knows)
        self.items = 0

    def format_prompt(self, system, user, assistant_prefix=""):
        return f"{system}\n{user}\n{assistant_prefix}"

    def label_probs(self, prompts, labels):
        out = []
        for p in prompts:
            task = re.search(r"\[([a-z-]+)\]", p).group(1)
            pick = "A" if task in self.knows else "B"
            out.append({lab: 0.8 if lab.strip() == pick else 0.2 / (len(labels) - 1) for lab in labels})
            self.items += 1
        return out

    def close(self):
        pass


def _auth(svc, role="admin"):
    key = svc["keys"].get(role)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _ticket(svc, body, **params):
    r = httpx.post(svc["url"] + "/v1/tickets", params={"candidates": 1, "cache": "false", **params}, json=body,
                   headers=_auth(svc, "ticket"), timeout=600)
    return r


class Stream:
    """Threads posting distinct cheap tickets until stopped; records every status and result."""

    TEXTS = ["Disk /var on {h} is 97% full and growing", "Users cannot reach the VPN gateway from {h}",
             "Replication lag on {h} above 5 minutes", "Pods on {h} stuck in CrashLoopBackOff"]

    def __init__(self, svc, threads=2):
        self.svc, self.stop, self.results, self.lock = svc, threading.Event(), [], threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i):
        n = 0
        while not self.stop.is_set():
            text = self.TEXTS[(n + i) % len(self.TEXTS)].format(h=f"host-{i}-{n}")
            try:
                r = _ticket(self.svc, {"title": text})
                row = (r.status_code, r.json() if r.headers.get("content-type", "").startswith("application/json")
                       else r.text, time.time())
            except httpx.HTTPError as exc:
                row = (-1, repr(exc), time.time())
            with self.lock:
                self.results.append(row)
            n += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=900)


def test_add_model_publish_while_tickets_flow_then_rollback(slim, tmp_path, monkeypatch, capsys):
    import leaderboard.runner as runner
    from core.config import ModelSpec
    from core.task_map import TaskMap
    from leaderboard.tasksets import MCItem, TaskInfo, TaskSet

    svc = slim
    admin = svc["keys"].get("admin")
    live = httpx.get(svc["url"] + "/v1/map", headers=_auth(svc), timeout=60).json()
    old_map = TaskMap.model_validate(live["current"])
    assert old_map.version == "slim-1" and set(old_map.routes.values()) == {OLD} and OLD in live["experts"]

    # A leaderboard over the service's tasks, one MC item each, with results for the deployed expert.
    ts = TaskSet(name="lifecycle", tasks=[TaskInfo(name=t) for t in svc["tasks"]],
                 items=[MCItem(id=f"{t}-1", task=t, question=f"[{t}] which option is right?",
                               options={"A": "right", "B": "wrong", "C": "other"}, answer=["A"])
                        for t in svc["tasks"]])
    out = tmp_path / "lb"
    old_spec = next(e for e in svc["cfg"].experts if e.name == OLD)
    runner.build_leaderboard(ts, [old_spec], out, runner.LeaderboardRunOptions(progress=False, plots=False),
                             hooks=runner.LeaderboardHooks(engine_factory=lambda s: ScriptedEngine(set(svc["tasks"]) - set(WON))))

    spec = ModelSpec(name=NEW, base="smollm2-135m-instruct", description="SmolLM2 as an on-call SRE",
                     system_prompt="You are an on-call SRE for storage and databases. Write short, concrete, "
                                   "numbered troubleshooting steps.")
    spec_file = tmp_path / "new.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    evaluated = []

    def factory(s):
        evaluated.append(s.name)
        return ScriptedEngine(WON)

    monkeypatch.setattr(runner, "default_engine_factory", factory)

    t0 = time.time()
    with Stream(svc) as stream:
        time.sleep(2)
        code = main(["leaderboard", "add-model", str(spec_file), "--out", str(out), "--quiet", "--no-plots",
                     "--publish", "--url", svc["url"], "--config", svc["config"],
                     *(["--admin-key", admin] if admin else [])])
        published_at = time.time()
        printed = capsys.readouterr()
        assert code == 0, printed.err + printed.out
        # Keep the stream going past the switch, and check routing on the new map meanwhile.
        new_live = httpx.get(svc["url"] + "/v1/map", headers=_auth(svc), timeout=60).json()
        new_map = TaskMap.model_validate(new_live["current"])
        tickets = [json.loads(x) for x in (STARTER_DIR / "tickets.jsonl").read_text().splitlines() if x.strip()]
        routed = []
        for task in WON:
            t = next(r for r in tickets if r["expected_task"] == task)
            r = _ticket(svc, {"title": t["title"], "description": t["description"]})
            assert r.status_code == 200, r.text
            routed.append(r.json())
    duration = time.time() - t0

    assert evaluated == [NEW], "only the new model is evaluated"
    for task in WON:
        assert f"{task}: {OLD} -> {NEW}" in printed.out
    assert new_map.version != old_map.version and NEW in new_live["experts"]
    assert {t: new_map.routes[t] for t in WON} == {t: NEW for t in WON}
    assert all(new_map.routes[t] == OLD for t in svc["tasks"] if t not in WON) and new_map.fallback == OLD

    failed = [r for r in stream.results if r[0] != 200]
    assert not failed, f"{len(failed)} of {len(stream.results)} requests failed during the publish: {failed[:3]}"
    assert len(stream.results) >= 2, "the stream must have carried tickets across the change"
    maps = {old_map.version: old_map, new_map.version: new_map}
    for _status, body, _ in stream.results:
        m = maps[body["map_version"]]  # each request used one whole snapshot, old or new
        assert body["expert"] == m.route(body["task"])
    assert any(body["map_version"] == new_map.version for _, body, ts_ in stream.results if ts_ > published_at) \
        or routed, "requests after the publish use the new map"
    for res in routed:
        assert res["map_version"] == new_map.version and res["expert"] == new_map.route(res["task"])
    assert any(res["expert"] == NEW for res in routed), [(r["task"], r["expert"]) for r in routed]

    code = main(["map", "rollback", "--url", svc["url"], *(["--admin-key", admin] if admin else [])])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    back = httpx.get(svc["url"] + "/v1/map", headers=_auth(svc), timeout=60).json()
    assert back["current"]["version"] == old_map.version and back["current"]["routes"] == old_map.routes
    time.sleep(1.5)  # replicas re-check the live map within a second
    t = next(r for r in tickets if r["expected_task"] == WON[0])
    r = _ticket(svc, {"title": t["title"] + " (again)", "description": t["description"]})
    assert r.status_code == 200, r.text
    assert r.json()["map_version"] == old_map.version and r.json()["expert"] == OLD
    print(f"lifecycle: {len(stream.results)} streamed tickets, 0 failed, {duration:.0f}s for add-model+publish")
