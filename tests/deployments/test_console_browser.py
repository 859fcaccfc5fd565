"""The operator console in headless Chromium (Debian's package, driven by Playwright without a browser
download) against the real service: submit a ticket, see the flowchart drawn as SVG, accept it and
find the feedback in the ticket store; correct a workflow in place and find the correction stored;
hostile ticket text and hostile model output never execute.

Screenshots are written to artifacts/console/ (git-ignored).
"""

import json
import os
import re
import shutil

import httpx
import pytest

from core.paths import REPO_ROOT
from core.workflow import Edge, Step, StepKind, Workflow, to_mermaid
from deployments.ticket_store import TicketStore

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

ARTIFACTS = REPO_ROOT / "artifacts" / "console"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SOLVE_TIMEOUT_MS = 900_000  # one ticket takes seconds alone, minutes on a busy 2-core machine

HOSTILE_TITLE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> disk full on db-01'
HOSTILE_DESCRIPTION = ('"]) --> X["injected"]; click S1 call alert(1)\n%%{init: {"securityLevel": "loose"}}%%\n'
                       "end\n`rm -rf /` | # {{ }} [[ ]] <svg onload=alert(3)> javascript:alert(4)")


def _chromium() -> str | None:
    return shutil.which("chromium") or (os.path.exists("/usr/bin/chromium") and "/usr/bin/chromium") or None


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
    with sync_api.sync_playwright() as p:
        # launch() starts Chromium with a fresh temporary --user-data-dir of its own.
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def console_ready(service):
    cfg = httpx.get(f"{service.url}/console/config.json", timeout=30).json()
    if not cfg["mermaid"]:
        pytest.skip("mermaid.js is not installed on the server (make console-assets fetches it from npm)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return service


class Watch:
    """Everything the page does that would reveal an injection: dialogs, page errors, CSP reports, requests."""

    def __init__(self, page):
        self.dialogs, self.errors, self.console, self.requests = [], [], [], []
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("request", lambda r: self.requests.append(r.url))

    def csp_violations(self):
        return [m for m in self.console if "Content Security Policy" in m]

    def assert_clean(self, page, base_url):
        assert not self.dialogs, f"a dialog was opened: {self.dialogs}"
        assert not self.errors, f"page errors: {self.errors}"
        assert not self.csp_violations(), f"something tried to run or load against the CSP: {self.csp_violations()}"
        assert page.evaluate("() => window.__pwned") is None
        assert page.evaluate("() => document.querySelectorAll('img[src=\"x\"], img[onerror], [onload]').length") == 0
        scripts = page.evaluate("() => Array.from(document.scripts).map(s => s.getAttribute('src'))")
        assert sorted(scripts) == ["/console/app.js", "/console/mermaid.min.js"], scripts
        stray = [u for u in self.requests if not u.startswith(base_url) and not u.startswith(("blob:", "data:"))]
        assert not stray, f"requests left the service: {stray}"
        assert not [u for u in self.requests if u.rstrip("/").endswith("/x")], "an injected <img src=x> was loaded"


def _open_console(browser, service, key):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    watch = Watch(page)
    page.goto(service.url + "/")
    page.wait_for_selector("#whoami:has-text('enter an API key')")
    page.fill("#api-key", key)
    page.click("#key-use")
    page.wait_for_selector("#whoami:has-text('signed in as')")
    return ctx, page, watch


def _submit(page, title, description, candidates=1):
    page.fill("#t-title", title)
    page.fill("#t-description", description)
    page.fill("#t-candidates", str(candidates))
    page.click("#submit-ticket")
    page.wait_for_selector("#chart svg, #ticket-status.error", timeout=SOLVE_TIMEOUT_MS)
    status = page.text_content("#ticket-status")
    assert page.query_selector("#chart svg") is not None, f"no flowchart drawn; status: {status}"


# The paraphrase test_cases_e2e sends (best-of-1): the result cache answers it while it is fresh, so this test
# computes nothing when it runs right after that one (it is the first here for that reason). Its case is on
# tape libraries, far from every other test's tickets.
EDIT_TICKET = ("Backup vault B: robotic arm of the tape library stuck, gripper fault",
               "Archive copy to the LTO-8 cartridges frozen at 3 percent since last night.")
REWRITE = "Read the gripper fault code on the library front panel"
ADDED = "Is the vault B interlock door closed?"

_EDITOR_ROWS = """() => Array.from(document.querySelectorAll('#edit-steps li.edit-row')).map((li) => ({
  kind: li.querySelector('.e-kind').value, text: li.querySelector('.e-text').value,
  next: li.querySelector('.e-next')?.value || null, yes: li.querySelector('.e-yes')?.value || null,
  no: li.querySelector('.e-no')?.value || null}))"""


def _steps_shown(rows):
    """The typed steps an editor showing `rows` means: rows are S1..Sn, a step goes on to the row below unless
    it names another, a decision to its yes and no rows."""
    out = []
    for pos, r in enumerate(rows, 1):
        kind = "process" if r["kind"] in ("process", "change") else r["kind"]
        step = {"id": f"S{pos}", "kind": kind, "text": r["text"].strip(),
                "action": "change" if r["kind"] == "change" else "observe", "next": None, "yes": None, "no": None}
        if kind == "process":
            step["next"] = f"S{r['next'] or pos + 1}"
        elif kind == "decision":
            step["yes"], step["no"] = f"S{r['yes']}", f"S{r['no']}"
        out.append(step)
    return out


def test_correct_a_workflow_in_place_and_the_stored_feedback_matches(console_ready, browser):
    """Rewrite a step, add one and turn it into a decision, delete one, set comment and outcome, send: the
    console shows the API's reason when it refuses, and the stored edit is the workflow on the screen. The
    ticket view shows what the workflow was grounded in (knowledge items, similar past cases, step sources)."""
    service = console_ready
    ctx, page, watch = _open_console(browser, service, service.keys["ticket"])
    try:
        _submit(page, *EDIT_TICKET)
        tid = page.text_content("[data-field='ticket-id']")
        result = service.get(f"/v1/tickets/{tid}").json()["result"]

        # Provenance: every knowledge item and similar case of the answer is listed, the reference marked.
        items = (result.get("knowledge") or {}).get("items") or []
        shown = page.eval_on_selector_all("#grounding tbody tr[data-id]", "rows => rows.map(r => r.dataset.id)")
        assert shown == [i["id"] for i in items]
        reference = result["knowledge"].get("reference")
        if reference:
            assert page.text_content(f"#grounding tr[data-id='{reference}'] td:last-child") == "reference"
            assert reference in page.text_content("#grounding-reference")
        cases = page.eval_on_selector_all("#similar-cases tbody tr[data-ticket]", "rows => rows.map(r => r.dataset.ticket)")
        assert cases == [c["ticket_id"] for c in result.get("similar_cases") or []]
        sources = [s["source"] for s in result["workflow"]["steps"] if s.get("source")]
        assert page.eval_on_selector_all("#steps .source", "xs => xs.map(x => x.dataset.source)") == sources

        page.click("#edit")
        page.wait_for_selector("#editor:not([hidden]) #edit-steps li.edit-row")
        original = page.evaluate(_EDITOR_ROWS)
        assert [r["text"] for r in original] == [s["text"] for s in result["workflow"]["steps"]]
        n = len(original)
        assert original[-1]["kind"] == "terminal", original  # the grammar ends every workflow with an end step
        deleted = next((pos for pos, r in enumerate(original, 1) if pos > 1 and r["kind"] in ("process", "change")), None)
        assert deleted, f"no step to delete in {original}"

        row = lambda pos: f"#edit-steps li.edit-row[data-pos='{pos}']"  # noqa: E731
        page.fill(f"{row(1)} .e-text", REWRITE)                          # rewrite step 1
        page.click(f"{row(1)} .e-insert")                                # add a step below it ...
        page.fill(f"{row(2)} .e-text", ADDED)
        page.select_option(f"{row(2)} .e-kind", "decision")              # ... and make it a decision
        page.select_option(f"{row(2)} .e-yes", "3")                      # yes: on with the old step 2
        page.select_option(f"{row(2)} .e-no", str(n + 1))                # no: the last end step
        page.click(f"{row(deleted + 1)} .e-delete")                      # delete a step (it is bypassed)
        page.fill("#edit-comment", "the interlock opens before the arm jams")
        page.select_option("#edit-outcome", "resolved")
        page.select_option("#edit-outcome-step", str(n))                 # resolved at the last step

        # Refused by the API (step 1 jumping to the end leaves the rest unreachable): its reason is shown.
        store = TicketStore(f"{service.cfg.serve.state_dir}/tickets.sqlite")
        page.select_option(f"{row(1)} .e-next", str(n))
        page.click("#edit-send")
        page.wait_for_selector("#edit-status.error")
        assert "422" in page.text_content("#edit-status") and "cannot be reached" in page.text_content("#edit-status")
        assert store.feedback(ticket_id=tid) == [], "refused feedback is not stored"
        page.select_option(f"{row(1)} .e-next", "")                      # back to: then the step below

        edited = page.evaluate(_EDITOR_ROWS)
        assert len(edited) == n and edited[0]["text"] == REWRITE
        assert edited[1] == {"kind": "decision", "text": ADDED, "next": None, "yes": edited[1]["yes"], "no": str(n)}
        assert original[deleted - 1]["text"] not in [r["text"] for r in edited] or \
            [r["text"] for r in original].count(original[deleted - 1]["text"]) > 1
        page.screenshot(path=str(ARTIFACTS / "edit.png"), full_page=True)
        page.click("#edit-send")
        page.wait_for_selector("#feedback-status:has-text('stored')")
        assert page.is_hidden("#editor")

        [fb] = store.feedback(ticket_id=tid)
        assert fb["verdict"] == "edit" and fb["candidate"] == result["best_index"] and fb["principal"] == "e2e-ticket"
        assert fb["comment"] == "the interlock opens before the arm jams"
        assert fb["outcome"] == {"status": "resolved", "step": f"S{n}"}
        stored = [{k: s.get(k) for k in ("id", "kind", "text", "action", "next", "yes", "no")} for s in fb["workflow"]["steps"]]
        assert stored == _steps_shown(edited)
        assert stored[0]["text"] == REWRITE and not fb["workflow"]["steps"][0].get("source"), "a rewritten step cites nothing"
        assert stored[1]["kind"] == "decision" and stored[1]["text"] == ADDED and stored[1]["no"] == f"S{n}"
        # The console now shows the correction it sent.
        assert page.text_content("#shown-candidate").startswith("correction")
        assert [t.strip() for t in page.eval_on_selector_all("#steps li", "xs => xs.map(x => x.childNodes[1].textContent)")] \
            == [s["text"] for s in stored]
        page.screenshot(path=str(ARTIFACTS / "edit-sent.png"), full_page=True)
        watch.assert_clean(page, service.url)
    finally:
        ctx.close()


def test_submit_see_flowchart_accept_and_feedback_is_stored(console_ready, browser):
    service = console_ready
    ctx, page, watch = _open_console(browser, service, service.keys["ticket"])
    try:
        assert "e2e-ticket" in page.text_content("#whoami")
        _submit(page, "db-01 disk 97% full, postgres cannot write WAL",
                "pg_wal on /var/lib/postgresql keeps growing; INSERTs fail with ENOSPC since 10:02")
        assert page.get_attribute("#chart", "data-rendered") == "svg"
        # The routing decision, the candidates with five scores, and the knowledge used are on the page.
        facts = {dt.text_content(): dd.text_content() for dt, dd in
                 zip(page.query_selector_all("#decision dt"), page.query_selector_all("#decision dd"))}
        for field in ("ticket id", "task", "confidence", "decision path", "expert", "map version"):
            assert facts.get(field), f"{field} missing from {facts}"
        rows = page.query_selector_all("#candidates tbody tr")
        assert len(rows) == 1
        scores = [c.text_content() for c in rows[0].query_selector_all("td")[2:8]]
        assert all(1 <= float(s) <= 5 for s in scores), scores
        assert page.query_selector_all("#context-ids li") and page.query_selector_all("#examples tbody tr")
        assert page.query_selector_all("#chart svg g.node"), "the flowchart has no nodes"
        # The workflow branches: mermaid.js draws the decision as a diamond (a polygon), with its Yes and No.
        assert page.query_selector("#chart svg g.node polygon"), \
            f"no decision diamond in the flowchart ({facts.get('expert')}): {page.text_content('#mermaid-src')}"
        edge_labels = page.evaluate("() => Array.from(document.querySelectorAll('#chart svg .edgeLabel'))"
                                    ".map(n => n.textContent.trim())")
        assert "Yes" in edge_labels and "No" in edge_labels, edge_labels
        # Grounded in the storage runbook, not an unrelated one, and the answer says so.
        assert "Filesystem full" in facts.get("knowledge", ""), facts
        page.screenshot(path=str(ARTIFACTS / "ticket.png"), full_page=True)

        page.fill("#feedback-comment", "worked on db-01")
        page.click("#accept")
        page.wait_for_selector("#feedback-status:has-text('stored')")
        ticket_id = facts["ticket id"]
        rows = [r for r in TicketStore(f"{service.cfg.serve.state_dir}/tickets.sqlite").feedback()
                if r["ticket_id"] == ticket_id]
        assert len(rows) == 1
        fb = rows[0]
        assert fb["verdict"] == "accept" and fb["candidate"] == 0 and fb["comment"] == "worked on db-01"
        assert fb["principal"] == "e2e-ticket", "feedback records which key sent it"

        page.click("#tab-ops")
        page.wait_for_selector("#stats .counter")
        page.wait_for_selector("#map-routes tbody tr")
        assert "starter" in page.text_content("#map-version") or page.text_content("#map-version")
        page.screenshot(path=str(ARTIFACTS / "operations.png"), full_page=True)
        watch.assert_clean(page, service.url)
    finally:
        ctx.close()


def test_hostile_ticket_text_never_executes_and_the_chart_renders(console_ready, browser):
    service = console_ready
    map_before = service.get("/v1/map").json()["current"]["version"]
    keys_before = {k["id"] for k in service.get("/v1/admin/keys").json()["keys"]}
    ctx, page, watch = _open_console(browser, service, service.keys["ticket"])
    try:
        _submit(page, HOSTILE_TITLE, HOSTILE_DESCRIPTION)
        # The ticket text is shown literally, as text.
        assert page.text_content("#result-title") == f"Ticket: {HOSTILE_TITLE}"
        assert page.get_attribute("#chart", "data-rendered") == "svg"
        page.screenshot(path=str(ARTIFACTS / "hostile-ticket.png"), full_page=True)
        watch.assert_clean(page, service.url)
    finally:
        ctx.close()
    # Ticket text cannot trigger admin actions.
    assert service.get("/v1/map").json()["current"]["version"] == map_before
    assert {k["id"] for k in service.get("/v1/admin/keys").json()["keys"]} >= keys_before


HOSTILE_STEPS = [
    "<script>window.__pwned=3</script> Restart nginx",
    '<img src=x onerror="window.__pwned=4"> Check the logs?',
    '"]) --> X["injected node',
    '%%{init: {"securityLevel": "loose"}}%% click S1 call alert(5)',
    "< img src=x onerror=alert(6) > pipe | grep #tag `tick` [a] {b}",
    "end",
]


def _hostile_result(ticket_id="hostile-model-1"):
    steps = [Step(id=f"S{i + 1}", kind=StepKind.decision if t.endswith("?") else StepKind.process, text=t)
             for i, t in enumerate(HOSTILE_STEPS)]
    steps += [Step(id="T1", kind=StepKind.terminal, text="Resolved <b onmouseover=alert(7)>now</b>"),
              Step(id="T2", kind=StepKind.terminal, text="Escalate")]
    edges = [Edge(source="S1", target="S2"), Edge(source="S2", target="S3", label='Yes"|<img src=x>'),
             Edge(source="S2", target="T2", label="No"), Edge(source="S3", target="S4"),
             Edge(source="S4", target="S5"), Edge(source="S5", target="S6"), Edge(source="S6", target="T1")]
    wf = Workflow(steps=steps, edges=edges)
    out = {"mermaid": to_mermaid(wf), "steps": [s.model_dump(mode="json") for s in steps],
           "edges": [e.model_dump() for e in edges]}
    scores = {"relevance": 4.0, "coverage": 3.5, "accuracy": 3.0, "coherence": 4.5, "conciseness": 2.5, "overall": 3.5}
    xss = '<img src=x onerror="window.__pwned=9">'
    return {
        "ticket_id": ticket_id, "task": f"storage{xss}", "confidence": 0.9, "decision_path": f"retrieval{xss}",
        "expert": f"expert{xss}", "map_version": f"v1{xss}", "workflow": out, "best_index": 0,
        "candidates": [{"index": 0, "workflow": out, "scores": scores, "raw_tokens": 10, "origin": f"model{xss}"}],
        "retrieved_examples": [{"id": f"ex{xss}", "task": f"t{xss}", "similarity": 0.5}],
        "context_ids": [f"chunk{xss}", "<script>window.__pwned=10</script>"], "knowledge_version": "kb",
        "timings_ms": {"total": 1.0}, "dropped_candidates": 0,
    }


def test_hostile_model_output_is_drawn_as_text(console_ready, browser):
    """Model output is untrusted too: a result whose labels, names and ids carry markup, Mermaid syntax and
    directives is drawn as a flowchart with those strings as literal text, and nothing runs."""
    service = console_ready
    result = _hostile_result()
    ctx, page, watch = _open_console(browser, service, service.keys["ticket"])
    try:
        page.route(re.compile(r"/v1/tickets\?"), lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(result)))
        leaderboard = {"source": "leaderboard", "taskset": "t<script>window.__pwned=11</script>", "png": False,
                       "updated": "now", "scores": {"storage<img src=x>": {"a": 0.8, "b<img src=x>": 0.4},
                                                    "network": {"a": 0.2, "b<img src=x>": 0.9}}}
        page.route(re.compile(r"/v1/console/leaderboard$"), lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(leaderboard)))
        _submit(page, "hostile model output", "")
        labels = page.evaluate("() => Array.from(document.querySelectorAll('#chart svg g.node'))"
                               ".map(n => n.textContent.trim())")
        assert any('"]) --> X["injected node' in x for x in labels), labels
        assert any("< img src=x onerror=alert(6) > pipe | grep #tag tick [a] {b}" in x for x in labels), labels
        assert any('%%{init: {"securityLevel": "loose"}}%% click S1 call alert(5)' in x for x in labels), labels
        assert len(labels) == len(HOSTILE_STEPS) + 2, "an injected node appeared or a step went missing"
        assert page.text_content("[data-field='expert']") == result["expert"]
        assert page.text_content("#context-ids").count("<script>") == 1
        page.screenshot(path=str(ARTIFACTS / "hostile-model-output.png"), full_page=True)
        page.click("#tab-ops")
        page.wait_for_selector("#heatmap td.winner")
        assert "storage<img src=x>" in page.text_content("#heatmap")
        watch.assert_clean(page, service.url)
    finally:
        ctx.close()


def test_a_ticket_deep_link_opens_the_ticket_with_its_flowchart(console_ready, browser):
    """/tickets/{id} (the link webhook messages carry) serves the console, which loads that ticket once a
    key is given, waits while it is still queued, and draws its flowchart."""
    service = console_ready
    key = service.keys["ticket"]
    r = httpx.post(f"{service.url}/v1/tickets", params={"mode": "async", "candidates": 1}, timeout=60,
                   headers={"Authorization": f"Bearer {key}"},
                   json={"id": "deep-link-1", "title": "db-01 disk 97% full, postgres cannot write WAL",
                         "description": "pg_wal on /var/lib/postgresql keeps growing; INSERTs fail with ENOSPC"})
    assert r.status_code == 202, r.text
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    watch = Watch(page)
    try:
        page.goto(service.url + "/tickets/deep-link-1")
        page.wait_for_selector("#whoami:has-text('enter an API key')")
        page.fill("#api-key", key)
        page.click("#key-use")
        page.wait_for_selector("#chart svg, #ticket-status.error", timeout=SOLVE_TIMEOUT_MS)
        assert page.query_selector("#chart svg") is not None, page.text_content("#ticket-status")
        assert page.get_attribute("#chart", "data-rendered") == "svg"
        assert page.text_content("[data-field='ticket-id']") == "deep-link-1"
        assert page.text_content("#result-title") == "Ticket deep-link-1"
        assert page.input_value("#lookup-id") == "deep-link-1"
        assert page.url == service.url + "/tickets/deep-link-1"
        assert page.query_selector_all("#steps li") and page.query_selector_all("#candidates tbody tr")
        page.screenshot(path=str(ARTIFACTS / "deep-link.png"), full_page=True)
        watch.assert_clean(page, service.url)
    finally:
        ctx.close()
