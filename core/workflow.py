"""Workflows as structured data, their Mermaid rendering, and the parsers that read model output.

A workflow is typed steps (process / decision / terminal) joined by optionally labelled edges.
Only workflows that pass `Workflow.validate_graph` are ever rendered, so FlowRouter never returns
broken Mermaid: text the models write is parsed, repaired, or dropped.
"""

from __future__ import annotations

import re
from enum import Enum

from pydantic import BaseModel, Field

MAX_LABEL_CHARS = 160


class StepKind(str, Enum):
    process = "process"
    decision = "decision"
    terminal = "terminal"


class Step(BaseModel):
    id: str = Field(description="Node id in the flowchart (S1, S2, ... / T1 for terminals).")
    kind: StepKind = Field(description="process, decision (a question with labelled branches) or terminal.")
    text: str = Field(description="What the operator does or checks.")


class Edge(BaseModel):
    source: str = Field(description="Step id the edge leaves.")
    target: str = Field(description="Step id the edge enters.")
    label: str | None = Field(default=None, description="Branch label such as Yes / No.")


class WorkflowError(ValueError):
    """Text that cannot be turned into a valid workflow."""


class Workflow(BaseModel):
    steps: list[Step] = Field(description="Nodes in reading order.")
    edges: list[Edge] = Field(description="Directed, labelled transitions.")

    # ---- structure -------------------------------------------------------------------------
    def validate_graph(self) -> "Workflow":
        ids = [s.id for s in self.steps]
        if not self.steps:
            raise WorkflowError("workflow has no steps")
        if len(set(ids)) != len(ids):
            raise WorkflowError("duplicate step ids")
        known = set(ids)
        for e in self.edges:
            if e.source not in known or e.target not in known:
                raise WorkflowError(f"edge {e.source}->{e.target} names an unknown step")
        out: dict[str, list[Edge]] = {i: [] for i in ids}
        for e in self.edges:
            out[e.source].append(e)
        for s in self.steps:
            if not s.text.strip():
                raise WorkflowError(f"step {s.id} has no text")
            if s.kind == StepKind.terminal and out[s.id]:
                raise WorkflowError(f"terminal step {s.id} has outgoing edges")
            if s.kind == StepKind.decision and len(out[s.id]) < 2:
                raise WorkflowError(f"decision {s.id} needs at least two branches")
            if s.kind != StepKind.terminal and not out[s.id]:
                raise WorkflowError(f"step {s.id} is a dead end (not terminal)")
        if not any(s.kind == StepKind.terminal for s in self.steps):
            raise WorkflowError("workflow has no terminal step")
        return self

    def action_steps(self) -> list[str]:
        """Texts of process and decision steps, in order (what STEPScore compares)."""
        return [s.text for s in self.steps if s.kind != StepKind.terminal]

    # ---- rendering -------------------------------------------------------------------------
    def to_mermaid(self) -> str:
        self.validate_graph()
        lines = ["flowchart TD"]
        for s in self.steps:
            label = escape_label(s.text)
            if s.kind == StepKind.decision:
                lines.append(f'    {s.id}{{"{label}"}}')
            elif s.kind == StepKind.terminal:
                lines.append(f'    {s.id}(["{label}"])')
            else:
                lines.append(f'    {s.id}["{label}"]')
        for e in self.edges:
            if e.label:
                lines.append(f"    {e.source} -->|{escape_label(e.label, quote=False)}| {e.target}")
            else:
                lines.append(f"    {e.source} --> {e.target}")
        return "\n".join(lines)

    def to_text(self) -> str:
        """Numbered steps with their branches, for terminals and logs."""
        number = {s.id: i + 1 for i, s in enumerate(self.steps)}
        out_edges: dict[str, list[Edge]] = {}
        for e in self.edges:
            out_edges.setdefault(e.source, []).append(e)
        lines = []
        for s in self.steps:
            mark = {"decision": "?", "terminal": "■", "process": " "}[s.kind.value]
            lines.append(f"{number[s.id]:>2}.{mark} {s.text}")
            edges = out_edges.get(s.id, [])
            if s.kind == StepKind.decision:
                for e in edges:
                    lines.append(f"      {e.label or '→'}: go to {number[e.target]}")
        return "\n".join(lines)


# ---- label hygiene -----------------------------------------------------------------------
_ENTITIES = {"&": "#amp;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "#": "#35;", "`": "#96;",
             "|": "#124;", "{": "#123;", "}": "#125;", "[": "#91;", "]": "#93;"}


def clean_step_text(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    """Plain one-line text: markdown emphasis, list markers and control characters removed."""
    text = re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", text)  # C0 and C1 controls (terminal escapes)
    text = re.sub(r"\*\*|__|`+|</?[A-Za-z][^<>]{0,80}>", "", text)  # markdown emphasis, HTML tags
    text = re.sub(r"^\s*(?:[-*+•]|\d+[.)]|step\s*\d+[:.)]?)\s*", "", text, flags=re.I)
    text = re.sub(r"\s+", " ", text).strip(" -:;,")
    if len(text) > limit:
        cut = text[:limit].rsplit(" ", 1)[0]
        text = cut.rstrip(" ,;:") + "…"
    return text


def escape_label(text: str, quote: bool = True) -> str:
    """Mermaid-safe label: entity codes for characters Mermaid or a browser would interpret."""
    text = clean_step_text(text)
    return "".join(_ENTITIES.get(ch, ch) for ch in text)


def unescape_label(text: str) -> str:
    for ch, code in _ENTITIES.items():
        text = text.replace(code, ch)
    return text


# ---- from numbered step lists (what the planners write) ----------------------------------
_NUMBERED = re.compile(r"^\s*(?:step\s*)?(\d{1,2})\s*[.):]\s*(.+)$", re.I)
_BULLET = re.compile(r"^\s*[-*•]\s+(.+)$")
_CLOSING = re.compile(r"^(?:resolve|close|verify|confirm|monitor|escalate|document|notify|update the ticket)",
                      re.I)


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


def is_decision(step: str) -> bool:
    return step.rstrip().endswith("?")


def workflow_from_steps(steps: list[str], resolved: str = "Resolved: verify the service and close the ticket",
                        escalate: str = "Escalate to the owning team with findings") -> Workflow:
    """Build a flowchart from ordered step texts.

    A step ending in '?' becomes a decision: Yes continues to the next step (the action for that
    finding); No skips past it to keep diagnosing, or escalates when nothing is left.
    """
    steps = [s for s in (clean_step_text(x) for x in steps) if s]
    if not steps:
        raise WorkflowError("no usable steps")
    # A trailing question has nothing to branch into; make it an action.
    while steps and is_decision(steps[-1]) and len(steps) > 1:
        steps[-1] = "Check: " + steps[-1].rstrip("?")
    nodes = [Step(id=f"S{i + 1}", kind=StepKind.decision if is_decision(t) else StepKind.process, text=t)
             for i, t in enumerate(steps)]
    if nodes[-1].kind == StepKind.decision:
        nodes[-1].kind = StepKind.process
    done = Step(id="T1", kind=StepKind.terminal, text=resolved)
    escal = Step(id="T2", kind=StepKind.terminal, text=escalate)
    edges: list[Edge] = []
    used_escalate = False
    n = len(nodes)
    for i, node in enumerate(nodes):
        nxt = nodes[i + 1].id if i + 1 < n else done.id
        if node.kind == StepKind.decision:
            edges.append(Edge(source=node.id, target=nxt, label="Yes"))
            skip = nodes[i + 2].id if i + 2 < n else None
            if skip is None:
                used_escalate = True
                skip = escal.id
            edges.append(Edge(source=node.id, target=skip, label="No"))
        else:
            edges.append(Edge(source=node.id, target=nxt))
    all_steps = nodes + [done] + ([escal] if used_escalate else [])
    return Workflow(steps=all_steps, edges=edges).validate_graph()


# ---- Mermaid parsing (for validation and for scoring any Mermaid workflow) ---------------
_HEADER = re.compile(r"^\s*(?:flowchart|graph)\s+(TD|TB|BT|LR|RL)\s*;?\s*$", re.I)
_NODE = re.compile(
    r"""(?P<id>[A-Za-z_][\w-]*)\s*
        (?P<shape>\(\[|\[\[|\[\(|\(\(|\[|\{\{|\{|\(|>)
        (?P<body>"[^"]*"|[^\]\)\}"]*)
        (?P<close>\]\)|\]\]|\)\]|\)\)|\]|\}\}|\}|\))""",
    re.X,
)
_ARROW = re.compile(r"\s*(?:--\s*(?P<l1>[^-|>][^->]*?)\s*-->|-->\s*\|(?P<l2>[^|]*)\||-->|---|-\.->|==>)\s*")
_SHAPES = {"[": "process", "(": "process", "[[": "process", "[(": "process", "{{": "process",
           ">": "process", "{": "decision", "([": "terminal", "((": "terminal"}
_CLOSERS = {"[": "]", "(": ")", "[[": "]]", "[(": ")]", "{{": "}}", ">": "]", "{": "}", "([": "])",
            "((": "))"}


class MermaidError(WorkflowError):
    """Text that is not a flowchart in the Mermaid subset FlowRouter reads."""


def _read_node(text: str, pos: int, nodes: dict[str, Step]) -> tuple[str, int]:
    m = _NODE.match(text, pos)
    if m and _CLOSERS[m.group("shape")] == m.group("close"):
        nid, body = m.group("id"), m.group("body").strip()
        if body.startswith('"') and body.endswith('"'):
            body = body[1:-1]
        kind = StepKind(_SHAPES[m.group("shape")])
        label = unescape_label(body).strip()
        if not label:
            raise MermaidError(f"node {nid} has an empty label")
        nodes[nid] = Step(id=nid, kind=kind, text=label)
        return nid, m.end()
    bare = re.compile(r"[A-Za-z_][\w-]*").match(text, pos)
    if not bare:
        raise MermaidError(f"expected a node at: {text[pos:pos + 30]!r}")
    return bare.group(0), bare.end()


def parse_mermaid(text: str) -> Workflow:
    """Parse a Mermaid flowchart (the subset of node shapes and arrows workflows use).

    Raises MermaidError on anything else, so a string that passes is renderable.
    """
    lines = [ln.strip() for ln in text.strip().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("%%")]
    if not lines or not _HEADER.match(lines[0]):
        raise MermaidError("missing 'flowchart TD' header")
    nodes: dict[str, Step] = {}
    order: list[str] = []
    edges: list[Edge] = []
    for ln in lines[1:]:
        ln = ln.rstrip(";")
        if re.match(r"^(classDef|class|style|linkStyle|click|subgraph|end|direction)\b", ln):
            if ln.startswith("click"):
                raise MermaidError("click directives are not allowed")
            continue
        pos = 0
        prev, pos = _read_node(ln, pos, nodes)
        order.append(prev)
        while pos < len(ln):
            a = _ARROW.match(ln, pos)
            if not a:
                raise MermaidError(f"cannot parse {ln!r} at column {pos}")
            label = a.group("l1") or a.group("l2")
            label = unescape_label(label.strip().strip('"')) if label else None
            nxt, pos = _read_node(ln, a.end(), nodes)
            order.append(nxt)
            edges.append(Edge(source=prev, target=nxt, label=label or None))
            prev = nxt
    for nid in order:
        if nid not in nodes:
            raise MermaidError(f"node {nid} is used but never given a label")
    seen: list[str] = []
    for nid in order:
        if nid not in seen:
            seen.append(nid)
    return Workflow(steps=[nodes[i] for i in seen], edges=edges)
