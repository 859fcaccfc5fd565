"""Prompt text for the Planner and the Scorer, kept in one place so experiments change one file.

Knowledge is shown in the same line form the Planner writes (`core.workflow.lines`): small models
continue a list by copying the closest list they have seen, so a reference workflow shown with
its decisions and branches is copied with them. Items are listed best last, right before the
ticket. Nothing is cut mid-sentence: texts are shown whole or as whole sentences.
"""

from __future__ import annotations

from core.schemas import ScoringContext
from core.workflow import GrammarSpec, Workflow, WorkflowError, render_lines
from core.workflow.grammar import grammar_lines
from experts.knowledge.markdown import whole_sentences
from experts.knowledge.workflows import reference_workflow

PLANNER_INSTRUCTION = (
    "Write the troubleshooting workflow for the ticket as a numbered list of 4 to 8 short steps. Each step is "
    "one line that starts with a verb. Write checks as yes/no questions ending with '?'. Use the reference steps "
    "that fit the ticket, adapted to its details. After a question, name the steps its yes and no answers lead to."
)
NO_KNOWLEDGE_NOTE = "No runbook matched this ticket; the example shows the form only (it is another incident)."

# Shown only when no knowledge matched: the form to imitate then comes from here.
PLANNER_EXAMPLE = """Incident: Checkout API returns HTTP 502 after a release
Workflow:
1. Check the 5xx rate and latency of the checkout service on the dashboard
2. Did the errors start with the latest release? yes 4, no 3
3. [end] Escalate to the checkout team with the dashboard and pod logs
4. [change] Roll back the checkout service to the previous release
5. Confirm the 5xx rate is back under the SLO
6. [end] Resolved: close the ticket"""

SCORER_SYSTEM = "You are a strict reviewer of incident troubleshooting workflows. You answer with one digit."

SCORER_DIMENSIONS = {
    "relevance": "Relevance: does the workflow address this ticket and agree with the reference knowledge?",
    "coverage": "Coverage: does the workflow cover both diagnosis and mitigation, without missing key checks?",
    "accuracy": "Accuracy: are the steps technically correct and safe for this kind of incident?",
    "coherence": "Coherence: are the steps in a logical order, with sensible yes/no branches?",
    "conciseness": "Conciseness: is every step short, concrete and free of repetition or filler?",
}

TICKET_CHARS = 1200
EXCERPT_CHARS = 400
MEANING_CHARS = 240


def node_workflow(node) -> Workflow | None:
    """The node's reference workflow, when it has a valid one."""
    steps = getattr(node, "workflow", None)
    if not steps:
        return None
    try:
        return Workflow(steps=steps).validate_graph()
    except (WorkflowError, ValueError):
        return None


def format_context(context) -> str:
    """Retrieved knowledge as prompt text: excerpts first, then incident nodes, best match last."""
    if context is None:
        return ""
    parts = []
    for chunk in reversed(getattr(context, "chunks", []) or []):
        parts.append(f"Excerpt from {chunk.source}: {whole_sentences(' '.join(chunk.text.split()), EXCERPT_CHARS)}")
    for node in reversed(getattr(context, "nodes", []) or []):
        lines = [f"Incident: {node.incident}"]
        if node.failure_description:
            lines.append(f"Meaning: {whole_sentences(node.failure_description, MEANING_CHARS)}")
        wf = node_workflow(node)
        if wf is not None:
            lines.append("Workflow:\n" + render_lines(wf))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


CASE_HEAD = {"edit": "Past ticket like this one, corrected by an operator",
             "accept": "Past ticket like this one, whose workflow an operator accepted"}


def case_workflow(workflow: Workflow, spec: GrammarSpec) -> Workflow:
    """A case's workflow as the Planner is shown it: as it is when the grammar could write it, else rebuilt the
    way runbook steps are (a gate question, long steps summarised), so the model can copy it line for line."""
    try:
        text = render_lines(workflow)
        if grammar_lines(text, spec) == len(workflow.steps):
            return workflow
    except WorkflowError:
        pass
    rebuilt = reference_workflow(workflow.action_steps(), [])
    return rebuilt if rebuilt is not None else workflow


def format_case(case, spec: GrammarSpec) -> str:
    """One past case as prompt text, in the same form as an incident: its ticket, then its workflow."""
    wf = case_workflow(case.workflow, spec)
    try:
        lines = render_lines(wf)
    except WorkflowError:
        lines = "\n".join(f"{i}. {t}" for i, t in enumerate(wf.action_steps(), 1))
    return f"{CASE_HEAD[case.verdict]}: {whole_sentences(case.title, MEANING_CHARS)}\nWorkflow:\n{lines}"


def case_scorer_context(case) -> ScoringContext:
    """The Scorer judges against the case the Planner followed: its ticket and its final workflow."""
    try:
        shown = render_lines(case.workflow)
    except WorkflowError:
        shown = "\n".join(case.workflow.action_steps())
    text = f"{CASE_HEAD[case.verdict]}: {whole_sentences(case.title, MEANING_CHARS)}\nReference workflow:\n{shown}"
    return ScoringContext(text=text, reference_steps=case.workflow.action_steps())


def planner_user_message(ticket: str, context_text: str) -> str:
    if context_text:
        guide = f"Reference knowledge:\n{context_text}\n\n"
    else:
        guide = f"{NO_KNOWLEDGE_NOTE}\nExample:\n{PLANNER_EXAMPLE}\n\n"
    return f"{PLANNER_INSTRUCTION}\n\n{guide}Ticket: {whole_sentences(ticket, TICKET_CHARS)}\nWorkflow:"


def scorer_context(context) -> ScoringContext:
    """What the Scorer judges relevance against: the best incident's meaning and reference workflow."""
    nodes = getattr(context, "nodes", None) or []
    if not nodes:
        return ScoringContext()
    node = nodes[0]
    lines = [f"Incident: {node.incident}"]
    if node.failure_description:
        lines.append(f"Meaning: {whole_sentences(node.failure_description, MEANING_CHARS)}")
    wf = node_workflow(node)
    if wf is not None:
        lines.append("Reference workflow:\n" + render_lines(wf))
    steps = wf.action_steps() if wf is not None else [*node.diagnosis_steps, *node.mitigation_steps]
    return ScoringContext(text="\n".join(lines), reference_steps=steps)


def scorer_user_message(ticket: str, workflow_text: str, dimension: str, context_text: str = "") -> str:
    # Knowledge and ticket first, the dimension last: the five prompts about one workflow share their
    # prefix, and so do the N candidates of one ticket up to the workflow.
    knowledge = f"Reference knowledge:\n{context_text}\n\n" if context_text else \
        "Reference knowledge: none matched this ticket.\n\n"
    return (f"{knowledge}Ticket: {whole_sentences(ticket, TICKET_CHARS)}\n\nProposed workflow:\n{workflow_text}\n\n"
            f"Rate the workflow from 1 (poor) to 5 (excellent).\n{SCORER_DIMENSIONS[dimension]}")
