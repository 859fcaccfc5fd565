"""Reference workflows: a runbook's diagnosis and mitigation steps as a branching workflow.

Built once per incident node at build time and shown to the Planner in the line form it writes
(`core.workflow.lines`), so a small model that continues the closest list it has seen copies
decisions and branches too, not only step texts.

- A conditional step ("If the mountpoint is /var, remove unused images") becomes a question with
  its own branches: yes leads to the action, no skips it.
- The checks of the diagnosis gate the mitigation: the last check asks whether the cause was
  found; no escalates at once (the next line), yes skips that line and goes on with the mitigation.
  Every jump is then two lines ahead, which a small model copying the list keeps right even
  when it drops a line.
- Long steps are summarised here, at build time (parentheticals and examples dropped, then the
  first sentence or the leading clauses), never cut in the middle of a clause.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.workflow import Action, Step, StepKind, Workflow, WorkflowError, clean_step_text, line_text
from core.workflow.actions import is_change
from experts.knowledge.markdown import leading_verb, split_sentences

REFERENCE_VERSION = 1  # bump when reference workflows change, so bases rebuild them
STEP_CHARS = 100
MAX_ACTIONS = 8  # lines before the terminals, so a workflow stays within the Planner's grammar
RESOLVED = "Resolved: the alert clears; close the ticket"
ESCALATE = "Escalate to the owning team with the findings"
FIXED_CAUSE = "Fix the cause found, then confirm the alert clears"
CAUSE_FOUND = "is the cause found?"

_CONDITIONAL = re.compile(r"^(?:if|when|whenever|in case(?: of)?|for the case that|in the case that)\s+(?P<rest>.+)$",
                          re.I)
_ELSE = re.compile(r"^(?:otherwise|else|if not|if no|if that fails)\s*[,:]?\s*(?P<rest>.+)$", re.I)
_MODAL_LEAD = re.compile(r"^(?:then\s+)?(?:(?:you|we|one|operators?)\s+(?:can|could|should|may|might|must|"
                         r"need to|have to|will need to|want to)\s+)", re.I)
_AUX = ("is", "are", "was", "were", "has", "have", "had", "can", "could", "does", "do", "did", "will", "would",
        "should", "must", "may")


# ---- summaries ---------------------------------------------------------------------------------
def summarise_step(text: str, limit: int = STEP_CHARS) -> str:
    """`text` within `limit` characters without cutting a clause; a step that cannot be is kept whole."""
    text = clean_step_text(text)
    if len(text) <= limit:
        return text
    short = re.sub(r"\s*\([^()]*\)", "", text)
    short = re.sub(r",?\s*\b(?:e\.g\.|for example|for instance|i\.e\.)[^.;:]*", "", short)
    short = re.sub(r"\s+", " ", short).strip(" ,;:")
    if len(short) <= limit:
        return short
    first = split_sentences(short)[0] if short else ""
    if len(first.split()) >= 4 and len(first) <= limit:
        return first.rstrip(".")
    for sep in ("; ", ": ", " - ", ", "):
        cut = short.rfind(sep, 0, limit)
        if cut >= limit // 3:
            return short[:cut].rstrip(" ,;:-")
    return text


def summarise_description(text: str, limit: int = 240) -> str:
    """Whole sentences of `text`, as many as fit in `limit` (at least the first, summarised)."""
    sentences = split_sentences(clean_step_text(text))
    out = ""
    for s in sentences:
        if out and len(out) + 1 + len(s) > limit:
            break
        out = f"{out} {s}".strip()
    return out if len(out) <= limit else summarise_step(out, limit)


# ---- conditionals --------------------------------------------------------------------------------
def question(condition: str) -> str:
    """A yes/no question from a condition: "the pod is pending" -> "Is the pod pending?"."""
    c = clean_step_text(condition).rstrip(" .,;:?")
    words = c.split()
    if not words:
        return ""
    for k, w in enumerate(words[:7]):
        if w.lower() in _AUX and k > 0:
            subject = " ".join(words[:k])
            if not re.match(r"^[A-Z]{2,}|^[A-Z][a-z]+[A-Z]", subject):
                subject = subject[0].lower() + subject[1:]
            return line_text(f"{w.capitalize()} {subject} {' '.join(words[k + 1:])}".strip(), question=True)
    if words[0].lower().endswith("ing"):
        return line_text(f"Are you {c[0].lower()}{c[1:]}", question=True)
    if words[0].lower() in ("you", "we"):
        return line_text(f"Do {c[0].lower()}{c[1:]}", question=True)
    return line_text(c[0].upper() + c[1:], question=True)


def _action_text(text: str) -> str:
    text = _MODAL_LEAD.sub("", clean_step_text(text)).strip(" ,;:")
    return text[:1].upper() + text[1:]


def split_conditional(step: str) -> tuple[str, str] | None:
    """(condition, action) of "If X, do Y" / "When X, then Y" / "In case of X: Y", else None."""
    m = _CONDITIONAL.match(clean_step_text(step))
    if not m:
        return None
    rest = m.group("rest")
    for pattern in (r"[,;]?\s+then\s+", r";\s+", r":\s+", r",\s+"):
        for sep in re.finditer(pattern, rest):
            cond, action = rest[: sep.start()], rest[sep.end():]
            if len(cond.split()) >= 2 and (_MODAL_LEAD.match(action) or leading_verb(action)):
                return cond, _action_text(action)
    return None


# ---- assembly ------------------------------------------------------------------------------------
@dataclass
class _Line:
    kind: str  # observe | change | decide | end
    text: str
    asked: bool = False  # written as a question in the runbook
    jump: str | None = None  # decide: "short" (yes: next line, no: skip it) or "gate" (no: next, yes: skip)


def _plain(text: str) -> _Line:
    text = summarise_step(line_text(text), STEP_CHARS)
    return _Line("change" if is_change(text) else "observe", text)


def _blocks(steps: list[str]) -> list[_Line]:
    lines: list[_Line] = []
    for raw in steps:
        raw = clean_step_text(raw)
        if not raw:
            continue
        cond = split_conditional(raw)
        if cond is not None and question(cond[0]):
            lines.append(_Line("decide", summarise_step(question(cond[0])), jump="short"))
            lines.append(_plain(cond[1]))
            continue
        otherwise = _ELSE.match(raw)
        if otherwise:
            raw = _action_text(otherwise.group("rest"))
        if raw.endswith("?"):
            line = _plain("Check: " + raw.rstrip("?"))
            line.asked = True
            lines.append(line)
            continue
        lines.append(_plain(raw))
    return lines


def _fit(diagnosis: list[_Line], mitigation: list[_Line]) -> tuple[list[_Line], list[_Line]]:
    """Both parts within MAX_ACTIONS lines, each keeping its first steps, a question never last."""
    budget = MAX_ACTIONS - 1  # the gate question
    while len(diagnosis) + len(mitigation) > budget:
        longer = diagnosis if len(diagnosis) >= len(mitigation) else mitigation
        longer.pop()
    for part in (diagnosis, mitigation):
        while part and part[-1].kind == "decide":
            part.pop()
    return diagnosis, mitigation


def _gate(diagnosis: list[_Line]) -> _Line:
    """The question that gates the mitigation, made from the last plain check when there is one."""
    if diagnosis and diagnosis[-1].kind == "observe" and not (len(diagnosis) > 1 and diagnosis[-2].kind == "decide"):
        last = diagnosis.pop()
        if last.asked:  # the runbook's own question gates: "Is the replica replaying but slowly?"
            return _Line("decide", last.text.removeprefix("Check: "), jump="gate")
        return _Line("decide", f"{last.text.rstrip('.')}: {CAUSE_FOUND}", jump="gate")
    return _Line("decide", "Did the checks above find the cause?", jump="gate")


def _render(lines: list[_Line], source: str | None) -> Workflow:
    steps = []
    for k, ln in enumerate(lines, 1):
        sid = f"S{k}"
        if ln.kind == "decide":
            # "short": yes runs the next line, no skips it; "gate": no is the next line (escalate), yes skips it.
            yes, no = (f"S{k + 1}", f"S{k + 2}") if ln.jump == "short" else (f"S{k + 2}", f"S{k + 1}")
            steps.append(Step(id=sid, kind=StepKind.decision, text=line_text(ln.text, question=True),
                              yes=yes, no=no, source=source))
        elif ln.kind == "end":
            steps.append(Step(id=sid, kind=StepKind.terminal, text=ln.text))
        else:
            steps.append(Step(id=sid, kind=StepKind.process, text=ln.text, next=f"S{k + 1}", source=source,
                              action=Action.change if ln.kind == "change" else Action.observe))
    return Workflow(steps=steps).validate_graph()


def reference_workflow(diagnosis: list[str], mitigation: list[str], description: str = "",
                       source: str | None = None) -> Workflow | None:
    """The branching workflow of one incident's steps, or None when it has fewer than two steps."""
    diag, mitig = _fit(_blocks(diagnosis), _blocks(mitigation))
    if len(diag) + len(mitig) < 2:
        return None
    if not diag:
        if mitig[0].kind == "change" and description:
            mitig.insert(0, _Line("observe", summarise_step("Confirm the symptom: " + summarise_description(
                description, 120))))
        lines = mitig + [_Line("decide", "Is the problem resolved?", jump="short"), _Line("end", RESOLVED),
                         _Line("end", ESCALATE)]
    elif not mitig:
        gate = _gate(diag)
        lines = diag + [gate, _Line("end", ESCALATE), _Line("end", FIXED_CAUSE)]
    else:
        gate = _gate(diag)
        lines = diag + [gate, _Line("end", ESCALATE)] + mitig + [_Line("end", RESOLVED)]
    if lines[0].kind == "change":
        lines.insert(0, _Line("observe", "Confirm the alert is firing and read its labels"))
    try:
        return _render(lines, source)
    except WorkflowError:
        return None
