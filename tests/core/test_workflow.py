import pytest

from core.workflow import (
    Action,
    MermaidError,
    Step,
    StepKind,
    Workflow,
    WorkflowError,
    escape_label,
    linear_workflow,
    parse_lines,
    parse_mermaid,
    parse_step_list,
    render_lines,
    to_mermaid,
)

DISK = """1. Check which filesystem is full with df -h
2. Is it the database WAL volume? yes 4, no 3
3. [end] Escalate to the storage team with the df output
4. [change] Remove WAL segments already archived
5. Confirm postgres writes WAL again
6. [end] Resolved: WAL writes resumed"""


def test_line_form_maps_one_to_one_onto_the_schema():
    wf = parse_lines(DISK, {1: "n-disk-full"})
    assert [s.kind for s in wf.steps] == [StepKind.process, StepKind.decision, StepKind.terminal, StepKind.process,
                                          StepKind.process, StepKind.terminal]
    decision = wf.steps[1]
    assert (decision.yes, decision.no) == ("S4", "S3") and decision.text.endswith("?")
    assert wf.steps[3].action == Action.change and wf.steps[0].action == Action.observe
    assert wf.steps[0].source == "n-disk-full"
    assert render_lines(wf) == DISK
    assert parse_lines(render_lines(wf)).model_dump(exclude={"steps": {0: {"source"}}}) == \
        wf.model_dump(exclude={"steps": {0: {"source"}}})


@pytest.mark.parametrize("bad, reason", [
    ("1. Check x\n3. [end] Done", "numbered 3"),
    ("1. Is it full? yes 2, no 7\n2. [end] Done", "does not exist"),
    ("1. Check x\n2. Is it full?\n3. [end] Done", "neither a step nor a question"),
    ("1. Check x\n2. Restart it", "dead end"),
    ("1. Check x\n2. [end] Done\n3. Restart it\n4. [end] Done", "cannot be reached"),
    ("", "no steps"),
])
def test_line_form_errors_name_the_problem(bad, reason):
    with pytest.raises(WorkflowError, match=reason):
        parse_lines(bad)


def test_mermaid_draws_decisions_as_diamonds_and_change_steps_distinctly():
    mermaid = to_mermaid(parse_lines(DISK))
    assert 'S2{"Is it the database WAL volume?"}' in mermaid
    assert "S2 -->|Yes| S4" in mermaid and "S2 -->|No| S3" in mermaid
    assert 'S6(["Resolved: WAL writes resumed"])' in mermaid
    assert "classDef change" in mermaid and "class S4 change" in mermaid


def test_mermaid_roundtrip_keeps_kinds_branches_and_actions():
    wf = parse_lines(DISK)
    parsed = parse_mermaid(to_mermaid(wf)).validate_graph()
    assert [(s.kind, s.action, s.next, s.yes, s.no) for s in parsed.steps] == \
        [(s.kind, s.action, s.next, s.yes, s.no) for s in wf.steps]
    assert parsed.action_steps() == wf.action_steps()


def test_edges_are_derived_from_the_steps():
    wf = parse_lines(DISK)
    assert [(e.source, e.target, e.label) for e in wf.edges()][:3] == [
        ("S1", "S2", None), ("S2", "S4", "Yes"), ("S2", "S3", "No")]
    # Stored results of older versions (nodes + edges) load into the typed steps.
    legacy = {"steps": [{"id": "S1", "kind": "decision", "text": "Up?"}, {"id": "T1", "kind": "terminal", "text": "a"},
                        {"id": "T2", "kind": "terminal", "text": "b"}],
              "edges": [{"source": "S1", "target": "T2", "label": "No"}, {"source": "S1", "target": "T1",
                                                                           "label": "Yes"}]}
    wf = Workflow.model_validate(legacy).validate_graph()
    assert (wf.steps[0].yes, wf.steps[0].no) == ("T1", "T2")


def test_structure_checks():
    wf = parse_lines(DISK)
    assert wf.branching_decisions() == 1 and wf.changes_before_observing() == []
    touchy = Workflow(steps=[Step(id="S1", kind=StepKind.process, action=Action.change, text="Restart", next="S2"),
                             Step(id="S2", kind=StepKind.terminal, text="Done")]).validate_graph()
    assert touchy.changes_before_observing() == ["S1"]
    with pytest.raises(WorkflowError, match="both a yes and a no"):
        Workflow(steps=[Step(id="A", kind=StepKind.decision, text="Up?", yes="T"),
                        Step(id="T", kind=StepKind.terminal, text="Done")]).validate_graph()
    with pytest.raises(WorkflowError, match="unknown step"):
        Workflow(steps=[Step(id="A", kind=StepKind.process, text="x", next="Z")]).validate_graph()
    with pytest.raises(WorkflowError, match="no terminal"):
        Workflow(steps=[Step(id="A", kind=StepKind.process, text="x", next="A")]).validate_graph()


def test_plain_step_lists_become_straight_workflows_with_actions_by_verb():
    wf = linear_workflow(["Check disk usage with df -h", "Restart the postgres service", "Run kubectl delete pod x"])
    assert [s.action for s in wf.steps[:3]] == [Action.observe, Action.change, Action.change]
    assert wf.steps[-1].kind == StepKind.terminal and wf.branching_decisions() == 0
    with pytest.raises(WorkflowError):
        linear_workflow(["   ", ""])


def test_step_list_parsing_cleans_and_stops_at_renumbering():
    text = ("Sure, here you go:\n1. **Check disk usage** with `df -h`\n2) Is usage above 90%?\n"
            "- Delete old logs\n3. Restart postgres\n1. Unrelated second list\n")
    assert parse_step_list(text) == ["Check disk usage with df -h", "Is usage above 90%?", "Delete old logs",
                                     "Restart postgres"]
    looping = "1. Check the disk usage now\n2. Rotate logs\n3. Check the disk usage now please\n4. Other"
    assert parse_step_list(looping) == ["Check the disk usage now", "Rotate logs"]


@pytest.mark.parametrize("hostile", [
    '<script>alert(1)</script> restart "api"',
    '<img src=x onerror=alert(1)>',
    'end"]; click S1 call alert(1); A["x',
    "pipe | brace { } bracket [ ] hash # backtick ` amp &",
])
def test_hostile_text_cannot_break_or_inject(hostile):
    wf = linear_workflow([hostile + " now", "Then restart the service"])
    mermaid = to_mermaid(wf)
    for line in mermaid.splitlines()[1:]:
        if '"' in line:
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
    assert (wf.steps[1].yes, wf.steps[1].no) == ("C", "D")
    wf.validate_graph()


@pytest.mark.parametrize("bad", ["", "graph XY\nA-->B", "flowchart TD\nA[x] --> ", "flowchart TD\nA --> B",
                                 "flowchart TD\nA[x]\nclick A callback", "flowchart TD\nA[x] --> B[y]\nA --> C[z]"])
def test_parse_mermaid_rejects(bad):
    with pytest.raises(MermaidError):
        parse_mermaid(bad)
