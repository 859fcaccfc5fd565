"""Reference workflows built from runbook steps: conditionals become decisions, nothing is cut."""

from core.workflow import GrammarSpec, StepKind, render_lines
from core.workflow.grammar import grammar_lines
from experts.knowledge.workflows import question, reference_workflow, split_conditional, summarise_step


def test_conditionals_become_decisions_with_their_branches():
    wf = reference_workflow(
        ["Check the alert's mountpoint label", "If the mountpoint is /var, remove unused images with crictl rmi --prune",
         "Look for deleted files still held open: lsof +L1"],
        ["Extend the volume when growth is legitimate"])
    text = render_lines(wf)
    assert "2. Is the mountpoint /var? yes 3, no 4" in text
    assert "3. [change] Remove unused images with crictl rmi --prune" in text
    gate = next(s for s in wf.steps if s.text.endswith("is the cause found?"))
    assert wf.step(gate.no).kind == StepKind.terminal and "Escalate" in wf.step(gate.no).text
    assert wf.step(gate.yes).text == "Extend the volume when growth is legitimate"
    # The reference is a text the Planner's grammar accepts, so a copy of it is a valid answer.
    assert grammar_lines(text, GrammarSpec()) == len(text.split("\n"))


def test_runbook_questions_gate_as_they_are():
    wf = reference_workflow(["Check replica status", "Is the replica replaying but slowly?"], ["Cancel the query"])
    assert any(s.kind == StepKind.decision and s.text == "Is the replica replaying but slowly?" for s in wf.steps)


def test_questions_from_conditions():
    assert question("the pod is pending") == "Is the pod pending?"
    assert question("you can still reach the API server") == "Can you still reach the API server?"
    assert question("MCO is not working on the master node") == "Is MCO not working on the master node?"
    assert question("using basic metrics like CPU") == "Are you using basic metrics like CPU?"
    assert split_conditional("When the etcd DB size increases, we can defragment it") == (
        "the etcd DB size increases", "Defragment it")
    assert split_conditional("If nothing else works") is None


def test_summaries_never_cut_mid_clause():
    long = ("Check pod template parameters such as pod priority (maybe it tries to use an unavailable resource), "
            "resources, readiness and liveness probes which may be incorrect, e.g. a wrong port or command, "
            "and check is failing too fast due to short timeout for response")
    short = summarise_step(long, 100)
    assert len(short) <= 100 and "…" not in short and long.startswith(short.split(",")[0])
    assert summarise_step("Restart the pod", 100) == "Restart the pod"
    one_clause = "x" * 150
    assert summarise_step(one_clause, 100) == one_clause  # kept whole rather than cut


def test_mitigation_only_runbooks_observe_first_and_verify():
    wf = reference_workflow([], ["Restart the exporter", "Scale the deployment"], "The exporter is down.")
    assert wf.steps[0].action.value == "observe" and not wf.changes_before_observing()
    assert wf.branching_decisions() == 1
