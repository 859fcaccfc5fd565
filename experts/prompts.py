"""Prompt text for the Planner and the Scorer, kept in one place so experiments change one file."""

from __future__ import annotations

PLANNER_INSTRUCTION = (
    "Write the troubleshooting workflow for the ticket as a numbered list of 4 to 8 short steps. "
    "Each step is one line that starts with a verb. Write checks as yes/no questions ending with '?'. "
    "Use the reference steps that fit the ticket, adapted to its details."
)

SCORER_SYSTEM = "You are a strict reviewer of incident troubleshooting workflows. You answer with one digit."

SCORER_DIMENSIONS = {
    "relevance": "Relevance: do the steps address this specific ticket rather than a generic problem?",
    "coverage": "Coverage: does the workflow cover both diagnosis and mitigation, without missing key checks?",
    "accuracy": "Accuracy: are the steps technically correct and safe for this kind of incident?",
    "coherence": "Coherence: are the steps in a logical order, with sensible yes/no branches?",
    "conciseness": "Conciseness: is every step short, concrete and free of repetition or filler?",
}


def format_context(context, max_steps: int = 10) -> str:
    """Retrieved knowledge as prompt text: excerpts first, then incident nodes, best match last.

    Reference steps are numbered exactly like the answer, because small models continue a
    numbered list by copying the closest numbered list they have seen (induction); the best
    match therefore sits right before the ticket.
    """
    if context is None:
        return ""
    parts = []
    for chunk in reversed(getattr(context, "chunks", []) or []):
        parts.append(f"Excerpt from {chunk.source}:\n{_clip(chunk.text, 400)}")
    for node in reversed(getattr(context, "nodes", []) or []):
        lines = [f"Incident: {node.incident}"]
        if node.failure_description:
            lines.append(f"Meaning: {_clip(node.failure_description, 240)}")
        steps = list(node.diagnosis_steps or []) + list(node.mitigation_steps or [])
        if steps:
            lines.append("Steps:\n" + "\n".join(f"{i}. {_clip(s, 160)}" for i, s in enumerate(steps[:max_steps], 1)))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# Shown only when no knowledge was retrieved: the numbered form to imitate then comes from here.
PLANNER_EXAMPLE = """Ticket: Checkout API returns HTTP 502 for most users since the 14:05 release
Workflow:
1. Check the 5xx rate and latency of the checkout service on the dashboard
2. Did the errors start with the 14:05 release?
3. Roll back the checkout service to the previous release
4. Inspect the checkout pod logs for upstream connection errors
5. Confirm the 5xx rate is back under the SLO threshold"""


def planner_user_message(ticket: str, context_text: str) -> str:
    if context_text:
        guide = f"Reference knowledge:\n{context_text}\n\n"
    else:
        guide = f"Example:\n{PLANNER_EXAMPLE}\n\n"
    return f"{PLANNER_INSTRUCTION}\n\n{guide}Ticket: {_clip(ticket, 1200)}\nWorkflow:"


def scorer_user_message(ticket: str, workflow_text: str, dimension: str) -> str:
    # The dimension comes last so the five prompts about one workflow share their prefix.
    return (f"Ticket: {_clip(ticket, 1200)}\n\nProposed workflow:\n{workflow_text}\n\n"
            f"Rate the workflow from 1 (poor) to 5 (excellent).\n{SCORER_DIMENSIONS[dimension]}")


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"
