"""Mermaid flowcharts of workflows: rendering (always valid, injection-safe) and parsing.

Process steps are boxes, decisions diamonds with Yes / No edges, terminals stadiums. Change steps
(state-altering) carry the `change` class, drawn in red, so an operator sees at a glance which
steps touch the system.
"""

from __future__ import annotations

import re

from core.workflow.lines import clean_step_text
from core.workflow.schema import Action, StepKind, Workflow, WorkflowError, attach_edges

CHANGE_CLASS = "change"
CHANGE_STYLE = "fill:#fdecea,stroke:#c0392b,stroke-width:2px"

_ENTITIES = {"&": "#amp;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "#": "#35;", "`": "#96;",
             "|": "#124;", "{": "#123;", "}": "#125;", "[": "#91;", "]": "#93;"}


class MermaidError(WorkflowError):
    """Text that is not a flowchart in the Mermaid subset FlowRouter reads."""


def escape_label(text: str) -> str:
    """Mermaid-safe label: entity codes for characters Mermaid or a browser would interpret."""
    return "".join(_ENTITIES.get(ch, ch) for ch in clean_step_text(text))


def unescape_label(text: str) -> str:
    for ch, code in _ENTITIES.items():
        text = text.replace(code, ch)
    return text


def to_mermaid(workflow: Workflow) -> str:
    workflow.validate_graph()
    lines = ["flowchart TD"]
    for s in workflow.steps:
        label = escape_label(s.text)
        if s.kind == StepKind.decision:
            lines.append(f'    {s.id}{{"{label}"}}')
        elif s.kind == StepKind.terminal:
            lines.append(f'    {s.id}(["{label}"])')
        else:
            lines.append(f'    {s.id}["{label}"]')
    for e in workflow.edges():
        lines.append(f"    {e.source} -->|{e.label}| {e.target}" if e.label else f"    {e.source} --> {e.target}")
    changes = [s.id for s in workflow.steps if s.action == Action.change and s.kind == StepKind.process]
    if changes:
        lines.append(f"    classDef {CHANGE_CLASS} {CHANGE_STYLE}")
        lines.append(f"    class {','.join(changes)} {CHANGE_CLASS}")
    return "\n".join(lines)


# ---- parsing ----------------------------------------------------------------------------------
_HEADER = re.compile(r"^\s*(?:flowchart|graph)\s+(TD|TB|BT|LR|RL)\s*;?\s*$", re.I)
_NODE = re.compile(
    r"""(?P<id>[A-Za-z_][\w-]*)\s*
        (?P<shape>\(\[|\[\[|\[\(|\(\(|\[|\{\{|\{|\(|>)
        (?P<body>"[^"]*"|[^\]\)\}"]*)
        (?P<close>\]\)|\]\]|\)\]|\)\)|\]|\}\}|\}|\))
        (?::::(?P<cls>[\w-]+))?""",
    re.X,
)
_ARROW = re.compile(r"\s*(?:--\s*(?P<l1>[^-|>][^->]*?)\s*-->|-->\s*\|(?P<l2>[^|]*)\||-->|---|-\.->|==>)\s*")
_SHAPES = {"[": "process", "(": "process", "[[": "process", "[(": "process", "{{": "process",
           ">": "process", "{": "decision", "([": "terminal", "((": "terminal"}
_CLOSERS = {"[": "]", "(": ")", "[[": "]]", "[(": ")]", "{{": "}}", ">": "]", "{": "}", "([": "])",
            "((": "))"}
_CLASS = re.compile(r"^class\s+([\w,-]+)\s+([\w-]+)\s*$")


def _read_node(text: str, pos: int, nodes: dict[str, dict], classes: dict[str, str]) -> tuple[str, int]:
    m = _NODE.match(text, pos)
    if m and _CLOSERS[m.group("shape")] == m.group("close"):
        nid, body = m.group("id"), m.group("body").strip()
        if body.startswith('"') and body.endswith('"'):
            body = body[1:-1]
        label = unescape_label(body).strip()
        if not label:
            raise MermaidError(f"node {nid} has an empty label")
        nodes[nid] = {"id": nid, "kind": _SHAPES[m.group("shape")], "text": label}
        if m.group("cls"):
            classes[nid] = m.group("cls")
        return nid, m.end()
    bare = re.compile(r"[A-Za-z_][\w-]*").match(text, pos)
    if not bare:
        raise MermaidError(f"expected a node at: {text[pos:pos + 30]!r}")
    return bare.group(0), bare.end()


def parse_mermaid(text: str) -> Workflow:
    """Parse a Mermaid flowchart (the node shapes and arrows workflows use) into a workflow.

    Raises MermaidError on anything else, so a string that passes is renderable; the result is
    not yet checked with `validate_graph` (callers decide whether it must be a complete workflow).
    """
    lines = [ln.strip() for ln in text.strip().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("%%")]
    if not lines or not _HEADER.match(lines[0]):
        raise MermaidError("missing 'flowchart TD' header")
    nodes: dict[str, dict] = {}
    classes: dict[str, str] = {}
    order: list[str] = []
    edges: list[dict] = []
    for ln in lines[1:]:
        ln = ln.rstrip(";")
        cm = _CLASS.match(ln)
        if cm:
            for nid in cm.group(1).split(","):
                classes[nid] = cm.group(2)
            continue
        if re.match(r"^(classDef|style|linkStyle|click|subgraph|end|direction)\b", ln):
            if ln.startswith("click"):
                raise MermaidError("click directives are not allowed")
            continue
        prev, pos = _read_node(ln, 0, nodes, classes)
        order.append(prev)
        while pos < len(ln):
            a = _ARROW.match(ln, pos)
            if not a:
                raise MermaidError(f"cannot parse {ln!r} at column {pos}")
            label = a.group("l1") or a.group("l2")
            label = unescape_label(label.strip().strip('"')) if label else None
            nxt, pos = _read_node(ln, a.end(), nodes, classes)
            order.append(nxt)
            edges.append({"source": prev, "target": nxt, "label": label or None})
            prev = nxt
    missing = [nid for nid in order if nid not in nodes]
    if missing:
        raise MermaidError(f"node {missing[0]} is used but never given a label")
    steps = []
    for nid in dict.fromkeys(order):
        node = dict(nodes[nid])
        if classes.get(nid) == CHANGE_CLASS and node["kind"] == "process":
            node["action"] = Action.change.value
        steps.append(node)
    try:
        return Workflow(steps=attach_edges(steps, edges))
    except WorkflowError as exc:
        raise MermaidError(str(exc)) from None
    except ValueError as exc:  # pydantic: a node id or field the schema refuses
        raise MermaidError(f"not a workflow: {exc}") from None
