"""The console's server side without Ray (page, assets, leaderboard and store views), the Mermaid label
hygiene it relies on, and the terminal rendering of `flowrouter ticket`."""

import json
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.auth_config import AuthConfig, ConsoleConfig
from core.workflow import Edge, Step, StepKind, Workflow, parse_mermaid, to_mermaid
from deployments import auth, console

HOSTILE = [
    "<script>alert(1)</script> restart nginx",
    '<img src=x onerror="alert(2)"> check the logs?',
    '"]) --> X["injected',
    '%%{init: {"securityLevel": "loose"}}%% click S1 call alert(3)',
    "< img src=x onerror=alert(4) > pipe | grep #tag `tick` [a] {b} &amp;",
    "end",
    "\x1b[31mred\x1b[0m \x9b2J text with control characters",
]


def _client(tmp_path, **console_kw):
    app = FastAPI()
    auth.install(app)
    console.install(app)
    auth.configure(AuthConfig(mode="open"), str(tmp_path), environ={})
    console.configure(ConsoleConfig(**console_kw), str(tmp_path), "open")
    return TestClient(app, base_url="http://127.0.0.1")


def test_page_is_served_with_a_strict_csp(tmp_path):
    client = _client(tmp_path)
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in r.text.replace('<script src="/console/app.js" defer></script>', "")
    assert client.get("/console/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/console/style.css").status_code == 200
    assert client.get("/console/..%2Fauth.py").status_code == 404
    assert client.get("/console/index.html").status_code == 404  # only whitelisted assets
    cfg = client.get("/console/config.json").json()
    assert set(cfg) == {"mermaid", "stats_poll_s", "auth_mode"}


def test_page_script_never_uses_html_sinks_with_data():
    js = (console.STATIC_DIR / "app.js").read_text()
    assert "innerHTML" not in js and "outerHTML" not in js and "insertAdjacentHTML" not in js
    assert "document.write" not in js and "eval(" not in js
    assert 'securityLevel: "strict"' in js


def test_mermaid_is_found_where_make_puts_it(tmp_path, monkeypatch):
    fake = tmp_path / "mermaid-0.0.0.min.js"
    fake.write_text("globalThis.mermaid = {};")
    monkeypatch.setenv("FLOWROUTER_MERMAID_JS", str(fake))
    client = _client(tmp_path)
    assert client.get("/console/config.json").json()["mermaid"] is True
    assert client.get("/console/mermaid.min.js").text == "globalThis.mermaid = {};"
    monkeypatch.setenv("FLOWROUTER_MERMAID_JS", str(tmp_path / "missing.js"))
    assert client.get("/console/config.json").json()["mermaid"] is False
    assert client.get("/console/mermaid.min.js").status_code == 404


def test_leaderboard_view_reads_results_and_degrades(tmp_path):
    client = _client(tmp_path, leaderboard_dir=str(tmp_path / "none"))
    assert client.get("/v1/console/leaderboard").json()["source"] == "none"
    assert client.get("/v1/console/leaderboard.png").status_code == 404
    lb = tmp_path / "lb"
    lb.mkdir()
    (lb / "summary.json").write_text(json.dumps({
        "taskset": "starter", "updated": "2026-11-22T00:00:00+00:00", "map": "lb-1",
        "matrix": [{"task": "storage", "expert": "a", "score": 0.8, "n": 5},
                   {"task": "storage", "expert": "b", "score": 0.4, "n": 5}, {"task": "bad"}],
        "averages": {"a": 0.8, "b": 0.4}}))
    (lb / "leaderboard.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    client = _client(tmp_path, leaderboard_dir=str(lb))
    view = client.get("/v1/console/leaderboard").json()
    assert view["source"] == "leaderboard" and view["png"] is True and view["map_version"] == "lb-1"
    assert view["scores"] == {"storage": {"a": 0.8, "b": 0.4}} and view["counts"]["storage"]["a"] == 5
    png = client.get("/v1/console/leaderboard.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


def test_overview_counts_the_ticket_store(tmp_path):
    from deployments.ticket_store import TicketStore

    client = _client(tmp_path)
    assert client.get("/v1/console/overview").json() == {"tickets": {}, "feedback": {}}
    store = TicketStore(tmp_path / "tickets.sqlite")
    store.accept("t1", {"title": "x"}, {})
    store.complete("t1", {"ok": True})
    store.add_feedback("t1", "accept", 0, None, principal="ops")
    assert client.get("/v1/console/overview").json() == {"tickets": {"done": 1}, "feedback": {"accept": 1}}


def _hostile_workflow() -> Workflow:
    steps = [Step(id=f"S{i + 1}", kind=StepKind.process, text=t) for i, t in enumerate(HOSTILE)]
    steps.append(Step(id="T1", kind=StepKind.terminal, text="done"))
    edges = [Edge(source=steps[i].id, target=steps[i + 1].id, label='Yes"|<b>' if i == 0 else None)
             for i in range(len(steps) - 1)]
    return Workflow(steps=steps, edges=edges)


def test_mermaid_labels_are_entity_escaped_server_side():
    text = to_mermaid(_hostile_workflow())
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    for ln in lines[1:]:
        label = re.search(r'\["(.*)"\]|\(\["(.*)"\]\)|\|(.*)\|', ln)
        if label:
            body = next(g for g in label.groups() if g is not None)
            assert not re.search(r'[<>"`\[\]{}|]', body), ln  # nothing Mermaid or a browser would interpret
    assert "%%{" not in text and "click S1" not in text.split("\n")[0]
    assert "\x1b" not in text and "\x9b" not in text
    # One node per step and the edges we wrote: the injection attempts did not add structure.
    parsed = parse_mermaid(text)
    assert [s.id for s in parsed.steps] == [f"S{i + 1}" for i in range(len(HOSTILE))] + ["T1"]
    assert len(parsed.edges()) == len(HOSTILE)


def test_terminal_rendering_boxes_branches_and_no_escape_sequences():
    from cluster.render import render_result, render_workflow

    wf = Workflow(steps=[Step(id="S1", kind=StepKind.process, text="Check disk usage with df -h"),
                         Step(id="S2", kind=StepKind.decision, text="Is /var over 90% full?"),
                         Step(id="S3", kind=StepKind.process, text="Rotate logs \x1b[2J and clean /var/tmp"),
                         Step(id="T1", kind=StepKind.terminal, text="Resolved"),
                         Step(id="T2", kind=StepKind.terminal, text="Escalate to storage team")],
                  edges=[Edge(source="S1", target="S2"), Edge(source="S2", target="S3", label="Yes"),
                         Edge(source="S2", target="T2", label="No"), Edge(source="S3", target="T1")])
    out = render_workflow([s.model_dump(mode="json") for s in wf.steps], [e.model_dump() for e in wf.edges()],
                          width=70, unicode=True)
    assert "┌" in out and "◆" in out and "╭" in out
    assert " 1 Check disk usage" in out and "├─ Yes ─▶ 3" in out and "└─ No ─▶ 5" in out
    assert "▼" in out  # straight-on flow is drawn as an arrow
    assert "\x1b" not in out
    assert all(len(line) <= 70 for line in out.splitlines())
    ascii_out = render_workflow([s.model_dump(mode="json") for s in wf.steps], [e.model_dump() for e in wf.edges()],
                                width=60, unicode=False)
    assert ascii_out.isascii() and "|- Yes -> 3" in ascii_out
    result = {"ticket_id": "t\x1b]0;pwned\x07", "task": "storage", "confidence": 0.9, "decision_path": "retrieval",
              "expert": "gemma3-infra", "map_version": "starter-1", "best_index": 0,
              "workflow": {"mermaid": to_mermaid(wf), "steps": [s.model_dump(mode="json") for s in wf.steps],
                           "edges": [e.model_dump() for e in wf.edges()]},
              "candidates": [{"scores": {"relevance": 4, "coverage": 3, "accuracy": 4, "coherence": 5,
                                         "conciseness": 3, "overall": 3.8}}],
              "context_ids": ["n-disk-full"], "timings_ms": {"total": 1234.5}}
    text = render_result(result, unicode=False)
    assert "\x1b" not in text and "\x07" not in text
    assert "best score 3.80/5" in text and "Mermaid:" in text and "n-disk-full" in text


def test_keys_cli_new_list_revoke_hash(tmp_path, capsys):
    from cluster.cli import main
    from deployments.auth import KeyFile, sha256_hash

    path = tmp_path / "keys.yaml"
    assert main(["keys", "new", "ops-bot", "--role", "ticket", "--rate", "120", "--file", str(path)]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    spec = KeyFile(path).read()[0]
    assert spec.id == "ops-bot" and spec.hash == sha256_hash(key) and spec.rate_per_minute == 120
    assert key not in path.read_text()
    assert main(["keys", "new", "ops-bot", "--role", "ticket", "--file", str(path)]) == 2
    assert main(["keys", "list", "--file", str(path)]) == 0
    assert "ops-bot" in capsys.readouterr().out
    assert main(["keys", "revoke", "ops-bot", "--file", str(path)]) == 0
    assert KeyFile(path).read() == []
    assert main(["keys", "revoke", "ops-bot", "--file", str(path)]) == 2


@pytest.mark.parametrize("scheme", ["sha256", "scrypt"])
def test_keys_cli_hash(monkeypatch, capsys, scheme):
    import io

    from cluster.cli import main
    from deployments.auth import scrypt_verify, sha256_hash

    monkeypatch.setattr("sys.stdin", io.StringIO("my secret\n"))
    assert main(["keys", "hash", *(["--scrypt"] if scheme == "scrypt" else [])]) == 0
    out = capsys.readouterr().out.strip()
    assert out == sha256_hash("my secret") if scheme == "sha256" else scrypt_verify("my secret", out)
