"""Workflows from plain step lists: what free-text answers and plain reference lists become.

Models on the serving path write the line form under a grammar; this module is for text that
was not written that way (a zero-shot baseline's numbered list, a runbook's step list), where
there are no written branches: the result is a straight sequence, never guessed branches.
"""

from __future__ import annotations

import re

from core.workflow.actions import is_change
from core.workflow.lines import clean_step_text, line_text
from core.workflow.schema import Action, Step, StepKind, Workflow, WorkflowError

RESOLVED = "Resolved: verify the service and close the ticket"

_NUMBERED = re.compile(r"^\s*(?:step\s*)?(\d{1,2})\s*[.):]\s*(.+)$", re.I)
_BULLET = re.compile(r"^\s*[-*•]\s+(.+)$")


def _near_duplicate(words: set[str], earlier: list[set[str]]) -> bool:
    for other in earlier:
        small = min(len(words), len(other)) or 1
        if len(words & other) / small >= 0.8:
            return True
    return False


def parse_step_list(text: str, max_steps: int = 30, truncated: bool = False) -> list[str]:
    """Numbered (or bulleted) lines from free text, cleaned, de-duplicated, in order.

    Parsing stops at the first restart of the numbering, which is where small models begin
    to ramble into a second, unrelated list, and at the first step that mostly repeats an
    earlier one (the start of a loop). With `truncated` (the model hit its token limit) the
    last line is incomplete and dropped.
    """
    lines = text.splitlines()
    if truncated and lines:
        lines = lines[:-1]
    steps: list[str] = []
    seen: list[set[str]] = []
    last_no = 0
    for raw in lines:
        m = _NUMBERED.match(raw)
        if m:
            no = int(m.group(1))
            if steps and no <= last_no:
                break
            last_no = no
            body = m.group(2)
        else:
            b = _BULLET.match(raw)
            if not b:
                continue
            body = b.group(1)
        step = clean_step_text(body)
        words = set(re.findall(r"\w+", step.lower()))
        if len(step) < 4 or len(words) < 2:
            continue
        if _near_duplicate(words, seen):
            break
        seen.append(words)
        steps.append(step)
        if len(steps) >= max_steps:
            break
    return steps


def linear_workflow(texts: list[str], ending: str = RESOLVED, source: str | None = None) -> Workflow:
    """Steps in order, each observing or changing by its verb, ending in one terminal."""
    texts = [t for t in (line_text(x) for x in texts) if t]
    if not texts:
        raise WorkflowError("no usable steps")
    steps = [Step(id=f"S{i}", kind=StepKind.process, text=t,
                  action=Action.change if is_change(t) else Action.observe, next=f"S{i + 1}", source=source)
             for i, t in enumerate(texts, 1)]
    steps.append(Step(id=f"S{len(texts) + 1}", kind=StepKind.terminal, text=ending))
    return Workflow(steps=steps).validate_graph()
