import pytest

from core.workflow import (
    Edge, MermaidError, Step, StepKind, Workflow, WorkflowError, escape_label, parse_mermaid, parse_step_list,
    workflow_from_steps,
)


def test_step_list_parsing_cleans_and_stops_at_renumbering():
    text = ("Sure, here you go:\n1. **Check disk usage** with `df -h`\n2) Is usage above 90%?\n"
            "- Delete old logs\n3. Restart postgres\n1. Unrelated second list\n")
    assert parse_step_list(text) == ["Check disk usage with df -h", "Is usage above 90%?", "Delete old logs",
                                     "Restart postgres"]


def test_step_list_drops_loops_and_truncated_tail():
    looping = "1. Check the disk usage now\n2. Rotate logs\n3. Check the disk usage now please\n4. Other"
    assert parse_step_list(looping) == ["Check the disk usage now", "Rotate logs"]
    assert parse_step_list("1. Check dns\n2. Flush caches\n3. Restart the res", truncated=True) == [
        "Check dns", "Flush caches"]


def test_workflow_from_steps_branches_and_terminals():
    wf = workflow_from_steps(["Check usage", "Is usage above 90%?", "Delete old logs", "Verify writes"])
    kinds = [s.kind for s in wf.steps]
    assert kinds == [StepKind.process, StepKind.decision, StepKind.process, StepKind.process, StepKind.terminal]
    out = {(e.source, e.label): e.target for e in wf.edges}
    assert out[("S2", "Yes")] == "S3" and out[("S2", "No")] == "S4"
    assert out[("S4", None)] == "T1"


def test_last_decision_without_followup_escalates():
    wf = workflow_from_steps(["Is the VPN tunnel up?", "Restart the tunnel"])
    out = {(e.source, e.label): e.target for e in wf.edges}
    assert out[("S1", "No")] == "T2"
    assert [s.text for s in wf.steps if s.id == "T2"][0].startswith("Escalate")


def test_mermaid_roundtrip():
    wf = workflow_from_steps(["Check the 5xx rate", "Did errors start with the deploy?", "Roll back", "Confirm"])
    parsed = parse_mermaid(wf.to_mermaid())
    assert parsed.action_steps() == wf.action_steps()
    assert [s.kind for s in parsed.steps] == [s.kind for s in wf.steps]
    assert [(e.source, e.target, e.label) for e in parsed.edges] == [(e.source, e.target, e.label) for e in wf.edges]


@pytest.mark.parametrize("hostile", [
    '<script>alert(1)</script> restart "api"',
    '<img src=x onerror=alert(1)>',
    'end"]; click S1 call alert(1); A["x',
    "pipe | brace { } bracket [ ] hash # backtick ` amp &",
])
def test_hostile_text_cannot_break_or_inject(hostile):
    wf = workflow_from_steps([hostile + " now", "Then restart the service"])
    mermaid = wf.to_mermaid()
    for line in mermaid.splitlines()[1:]:
        if "[" in line and "-->" not in line:
            label = line.split('"', 1)[1].rsplit('"', 1)[0]
            assert '"' not in label and "<" not in label and ">" not in label
    assert "click" not in mermaid.split("\n", 1)[1].split('"')[0]
    assert len(parse_mermaid(mermaid).steps) == len(wf.steps)


def test_escape_label_entities():
    assert escape_label('a "b" <b>c</b> #d') == "a #quot;b#quot; c #35;d"
    assert escape_label("p99 < 200ms and errors > 5") == "p99 #lt; 200ms and errors #gt; 5"


def test_parse_common_mermaid_shapes():
    wf = parse_mermaid("graph LR\nA[Start] --> B{Up?}\nB -- Yes --> C([Done])\nB -->|No| D(Restart)\nD --> C")
    assert [s.kind.value for s in wf.steps] == ["process", "decision", "terminal", "process"]
    assert [e.label for e in wf.edges] == [None, "Yes", "No", None]


@pytest.mark.parametrize("bad", ["", "graph XY\nA-->B", "flowchart TD\nA[x] --> ", "flowchart TD\nA --> B",
                                 "flowchart TD\nA[x]\nclick A callback"])
def test_parse_mermaid_rejects(bad):
    with pytest.raises(MermaidError):
        parse_mermaid(bad)


def test_validate_graph_rejects_broken_structures():
    s = [Step(id="A", kind=StepKind.decision, text="Up?"), Step(id="T", kind=StepKind.terminal, text="Done")]
    with pytest.raises(WorkflowError, match="two branches"):
        Workflow(steps=s, edges=[Edge(source="A", target="T")]).validate_graph()
    with pytest.raises(WorkflowError, match="unknown step"):
        Workflow(steps=s, edges=[Edge(source="A", target="Z")]).validate_graph()
    with pytest.raises(WorkflowError, match="no terminal"):
        Workflow(steps=[Step(id="A", kind=StepKind.process, text="x")],
                 edges=[Edge(source="A", target="A")]).validate_graph()
    with pytest.raises(WorkflowError):
        workflow_from_steps(["   ", ""])
