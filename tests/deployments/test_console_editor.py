"""The console's workflow editor (console_static/app.js), run in Node without a browser: the rows it builds
from a workflow, the edits an operator makes, and the typed steps it sends, which the API's own validator
(core.schemas.Feedback) must accept as the workflow the operator sees."""

import json
import shutil
import subprocess

import pytest

from core.schemas import Feedback, corrected_workflow
from core.workflow import parse_lines, parse_mermaid
from deployments.console import STATIC_DIR

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

# Loads app.js in a bare context (no DOM: the page's init never runs) and applies the edits on stdin.
HARNESS = r"""
const vm = require("vm"), fs = require("fs");
const ctx = { window: {}, document: { addEventListener() {} }, sessionStorage: { getItem() { return null; } }, console };
vm.createContext(ctx);
vm.runInContext(fs.readFileSync(process.argv[1], "utf8"), ctx);
const C = ctx.window.FlowRouterConsole;
const job = JSON.parse(fs.readFileSync(0, "utf8"));
let rows = C.editorRows(job.steps), seq = rows.length;
const key = (pos) => rows[pos - 1].key;
for (const [op, pos, arg, arg2] of job.edits) {
  if (op === "text") rows[pos - 1].text = arg;
  else if (op === "delete") C.deleteRow(rows, key(pos));
  else if (op === "insert") { C.insertRow(rows, pos ? key(pos) : null, ++seq); rows[pos ? pos : rows.length - 1].text = arg; }
  else if (op === "move") C.moveRow(rows, key(pos), arg);
  else if (op === "kind") C.setKind(rows, key(pos), arg);
  else if (op === "branches") { rows[pos - 1].yes = key(arg); rows[pos - 1].no = key(arg2); }
  else if (op === "next") rows[pos - 1].next = arg ? key(arg) : null;
}
let out;
try { out = { steps: C.editedSteps(rows) }; } catch (e) { out = { error: e.message }; }
process.stdout.write(JSON.stringify(out));
"""

TAPE = parse_lines("1. Check the robot arm status on the library console\n"
                   "2. Is a cartridge stuck in the gripper? yes 3, no 5\n"
                   "3. [change] Eject the stuck cartridge with the release lever\n"
                   "4. [end] Resolved: the archive job writes again\n"
                   "5. [end] Escalate to the storage vendor",
                   sources={1: "n-arm", 3: "n-arm"})


def edit(workflow, edits):
    job = {"steps": [s.model_dump(mode="json") for s in workflow.steps], "edits": edits}
    run = subprocess.run([NODE, "-e", HARNESS, str(STATIC_DIR / "app.js")], input=json.dumps(job),
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(run.stdout)


def sent(out):
    """The workflow the API stores for these steps (raises when it would refuse them)."""
    assert "steps" in out, out
    return corrected_workflow(Feedback(verdict="edit", steps=out["steps"]))


def lines(wf):
    return [(s.kind.value, s.action.value, s.text, s.next, s.yes, s.no) for s in wf.steps]


def test_an_unedited_workflow_is_sent_as_it_came():
    assert sent(edit(TAPE, [])).model_dump() == TAPE.model_dump()


def test_rewrite_delete_add_and_decide():
    out = edit(TAPE, [
        ["text", 1, "Read the gripper fault code on the library console"],   # rewrite
        ["insert", 1, "Is the library door closed"],                         # add below step 1
        ["kind", 2, "decision"],                                             # ... and make it a decision
        ["branches", 2, 3, 6],                                                # yes: on, no: escalate
        ["delete", 4],                                                       # the eject step is bypassed
    ])
    wf = sent(out)
    assert lines(wf) == [
        ("process", "observe", "Read the gripper fault code on the library console", "S2", None, None),
        ("decision", "observe", "Is the library door closed", None, "S3", "S5"),
        ("decision", "observe", "Is a cartridge stuck in the gripper?", None, "S4", "S5"),
        ("terminal", "observe", "Resolved: the archive job writes again", None, None, None),
        ("terminal", "observe", "Escalate to the storage vendor", None, None, None),
    ]
    # A rewritten step no longer cites the runbook node it came from; untouched steps keep their source.
    assert [s.get("source") for s in out["steps"]] == [None, None, None, None, None]
    kept = sent(edit(TAPE, [["text", 2, "Is a cartridge stuck in the gripper?"]]))
    assert [s.source for s in kept.steps] == ["n-arm", None, "n-arm", None, None]


def test_moving_a_step_keeps_the_decisions_that_lead_to_it():
    wf = sent(edit(TAPE, [
        ["insert", 1, "Read the gripper fault code"], ["move", 2, -1],  # the new step goes first
        ["move", 6, -1],                                                 # escalation above the resolved end
        ["next", 4, 6],                                                  # so the eject step names where it goes
    ]))
    assert [s.text for s in wf.steps] == ["Read the gripper fault code", TAPE.steps[0].text, TAPE.steps[1].text,
                                          TAPE.steps[2].text, TAPE.steps[4].text, TAPE.steps[3].text]
    assert (wf.steps[2].yes, wf.steps[2].no) == ("S4", "S5"), "the decision follows its rows, not their numbers"
    assert wf.steps[3].next == "S6" and wf.steps[0].next == "S2" and wf.steps[1].next == "S3"


def test_a_jump_that_is_not_the_next_row_survives_editing():
    jumpy = parse_mermaid("flowchart TD\n S1[Check the arm] --> S2{Stuck?}\n S2 -->|Yes| S3[Eject it]\n"
                          " S2 -->|No| T2([Escalate])\n S3 --> T1([Resolved])\n T2\n T1")
    assert jumpy.steps[2].next == "T1" and jumpy.steps[3].id == "T2"  # S3 jumps over T2
    wf = sent(edit(jumpy, [["text", 1, "Check the arm on the console"]]))
    assert wf.steps[2].next == "S5" and wf.steps[1].no == "S4"


def test_what_the_editor_refuses_before_sending():
    assert edit(TAPE, [["text", 3, "   "]]) == {"error": "step 3 has no text"}
    assert "decision 2 needs a yes step and a no step" in edit(TAPE, [["delete", 5]])["error"]
    last = edit(TAPE, [["kind", 5, "process"]])
    assert last["error"].startswith("step 5 is the last one and leads nowhere")
    # What only the server can judge (here: an unreachable step) is sent, and the API refuses it with the reason.
    out = edit(TAPE, [["next", 1, 3]])
    with pytest.raises(ValueError, match="cannot be reached"):
        sent(out)
