"""The compact line form of a workflow: what the models write, and how knowledge is shown to them.

    1. Check which filesystem is full with df -h
    2. Is it the database WAL volume? yes 3, no 5
    3. [change] Remove WAL segments already archived
    4. [end] Resolved: WAL writes resumed
    5. [end] Escalate to the storage team with the df output

One line per step, numbered from 1. A plain line observes (a read-only check) and continues with
the next line; `[change]` marks a step that alters state; a question names both of its targets;
`[end]` is a terminal. Step texts come first and plain, so a small model that continues the
closest list it has seen copies the reference's texts rather than being steered by a keyword.
The form maps one-to-one onto `Workflow`: `parse_lines(render_lines(wf)) == wf`. The grammar in
`core.workflow.grammar` generates a subset of it in which every workflow is valid.
"""

from __future__ import annotations

import re

from core.workflow.schema import Action, Step, StepKind, Workflow, WorkflowError

CHANGE_TAG = "[change] "
END_TAG = "[end] "
# Characters a step's text never contains in this form: they delimit the line's own syntax.
FORBIDDEN = "\n[]?"

_LINE = re.compile(r"^(?P<no>\d{1,2})\. (?P<tag>\[change\] |\[end\] )?(?P<body>.+?)$")
_DECIDE = re.compile(r"^(?P<q>[^?\[\]]+)\? yes (?P<yes>\d{1,2}), no (?P<no>\d{1,2})$")
_TEXT = re.compile(r"^[^?\[\]]+$")


def clean_step_text(text: str) -> str:
    """Plain one-line text: markdown emphasis, list markers and control characters removed."""
    text = re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", str(text))  # C0 and C1 controls (terminal escapes)
    text = re.sub(r"\*\*|__|`+|</?[A-Za-z][^<>]{0,80}>", "", text)  # markdown emphasis, HTML tags
    text = re.sub(r"^\s*(?:[-*+•]|\d+[.)]|step\s*\d+[:.)]?)\s*", "", text, flags=re.I)
    return re.sub(r"\s+", " ", text).strip(" -:;,")


def line_text(text: str, question: bool = False) -> str:
    """`text` as the line form can carry it: one line, brackets as parentheses, '?' only ending a question."""
    text = clean_step_text(text).replace("[", "(").replace("]", ")")
    body = text.rstrip("?").rstrip()
    body = body.replace("?", ".") or text.replace("?", "")
    return f"{body}?" if question else body


def parse_lines(text: str, sources: dict[int, str] | None = None) -> Workflow:
    """The workflow a text in line form describes; WorkflowError names the first problem.

    `sources` maps line numbers to the knowledge item the step came from.
    """
    rows = [ln.rstrip() for ln in text.strip("\n").split("\n")]
    if not rows or not rows[0]:
        raise WorkflowError("no steps")
    steps: list[Step] = []
    for i, row in enumerate(rows, 1):
        m = _LINE.match(row)
        if not m:
            raise WorkflowError(f"line {i} is not '<n>. <text>': {row[:60]!r}")
        if int(m["no"]) != i:
            raise WorkflowError(f"line {i} is numbered {m['no']}")
        steps.append(_step(i, m["tag"], m["body"], len(rows), (sources or {}).get(i)))
    return Workflow(steps=steps).validate_graph()


def _step(i: int, tag: str | None, body: str, n: int, source: str | None) -> Step:
    sid = f"S{i}"
    if tag == END_TAG:
        if not _TEXT.match(body):
            raise WorkflowError(f"terminal step {i} has a '?', '[' or ']' in it: {body[:60]!r}")
        return Step(id=sid, kind=StepKind.terminal, text=body.strip())
    d = _DECIDE.match(body)
    if d and tag is None:
        yes, no = int(d["yes"]), int(d["no"])
        for target in (yes, no):
            if not 1 <= target <= n:
                raise WorkflowError(f"decision {i} leads to step {target}, which does not exist")
        return Step(id=sid, kind=StepKind.decision, text=d["q"].strip() + "?", yes=f"S{yes}", no=f"S{no}",
                    source=source)
    if not _TEXT.match(body):
        raise WorkflowError(f"step {i} is neither a step nor a question with its targets: {body[:60]!r}")
    action = Action.change if tag == CHANGE_TAG else Action.observe
    return Step(id=sid, kind=StepKind.process, action=action, text=body.strip(),
                next=f"S{i + 1}" if i < n else None, source=source)


def render_lines(workflow: Workflow) -> str:
    """`workflow` in line form. Raises WorkflowError when a process step does not continue with the line
    after it (the form cannot express that)."""
    number = {s.id: i + 1 for i, s in enumerate(workflow.steps)}
    out = []
    for i, s in enumerate(workflow.steps, 1):
        if s.kind == StepKind.decision:
            out.append(f"{i}. {line_text(s.text, question=True)} yes {number[s.yes]}, no {number[s.no]}")
        elif s.kind == StepKind.terminal:
            out.append(f"{i}. {END_TAG}{line_text(s.text)}")
        else:
            if s.next != (workflow.steps[i].id if i < len(workflow.steps) else None):
                raise WorkflowError(f"step {s.id} does not continue with the next line; the line form "
                                    "cannot express it")
            tag = CHANGE_TAG if s.action == Action.change else ""
            out.append(f"{i}. {tag}{line_text(s.text)}")
    return "\n".join(out)
