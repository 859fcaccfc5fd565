"""The workflow schema: typed steps that carry their own transitions.

A workflow is an ordered list of steps. A process step names the step that follows it, a decision
names its Yes and No targets, a terminal ends the workflow. Every step also carries an action
class (AOI's read/write separation): `observe` reads state, `change` alters it. Edges are derived
from the steps, never stored beside them, so the two cannot disagree.
"""

from __future__ import annotations

import re
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StepKind(str, Enum):
    process = "process"
    decision = "decision"
    terminal = "terminal"


class Action(str, Enum):
    observe = "observe"
    change = "change"


class WorkflowError(ValueError):
    """Text or data that cannot be turned into a valid workflow."""


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Node id in the flowchart (S1, S2, ...).", pattern=r"^[A-Za-z_][\w-]{0,31}$")
    kind: StepKind = Field(description="process, decision (a yes/no question) or terminal.")
    text: str = Field(description="What the operator does, checks or concludes.")
    action: Action = Field(default=Action.observe,
                           description="observe (read-only) or change (alters state); decisions observe.")
    next: str | None = Field(default=None, description="Process steps: the step that follows.")
    yes: str | None = Field(default=None, description="Decisions: the step taken when the answer is yes.")
    no: str | None = Field(default=None, description="Decisions: the step taken when the answer is no.")
    source: str | None = Field(default=None, description="Knowledge item (incident node or chunk id) the step "
                                                         "comes from, when it cites one.")

    def targets(self) -> list[tuple[str, str | None]]:
        """(target id, edge label) of every transition out of this step."""
        if self.kind == StepKind.process:
            return [(self.next, None)] if self.next else []
        if self.kind == StepKind.decision:
            return [(t, label) for t, label in ((self.yes, "Yes"), (self.no, "No")) if t]
        return []


class Edge(BaseModel):
    source: str = Field(description="Step id the edge leaves.")
    target: str = Field(description="Step id the edge enters.")
    label: str | None = Field(default=None, description="Yes / No on a decision's branches.")


class Workflow(BaseModel):
    steps: list[Step] = Field(description="Steps in reading order; the first one is where the workflow starts.")

    @model_validator(mode="before")
    @classmethod
    def _from_graph(cls, data):
        # A graph given as nodes plus edges (Mermaid, stored results of older versions) gets its
        # transitions moved onto the steps.
        if isinstance(data, dict) and "edges" in data:
            steps = [dict(s) if isinstance(s, dict) else s.model_dump() for s in data.get("steps", [])]
            return {"steps": attach_edges(steps, data["edges"])}
        return data

    # ---- structure -------------------------------------------------------------------------
    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def edges(self) -> list[Edge]:
        return [Edge(source=s.id, target=t, label=label) for s in self.steps for t, label in s.targets()]

    def validate_graph(self) -> Workflow:
        """Raise WorkflowError unless every step is well formed, reachable, and can reach a terminal."""
        if not self.steps:
            raise WorkflowError("workflow has no steps")
        ids = [s.id for s in self.steps]
        if len(set(ids)) != len(ids):
            raise WorkflowError("duplicate step ids")
        known = set(ids)
        for s in self.steps:
            _check_step(s, known)
        reachable = self._reachable(self.steps[0].id)
        unreachable = [i for i in ids if i not in reachable]
        if unreachable:
            raise WorkflowError(f"steps {unreachable} cannot be reached from {ids[0]}")
        terminals = {s.id for s in self.steps if s.kind == StepKind.terminal}
        stuck = [s.id for s in self.steps if not (self._reachable(s.id) & terminals)]
        if stuck:
            raise WorkflowError(f"no terminal step can be reached from {stuck}")
        return self

    def _reachable(self, start: str) -> set[str]:
        by_id = {s.id: s for s in self.steps}
        seen, todo = set(), [start]
        while todo:
            sid = todo.pop()
            if sid in seen or sid not in by_id:
                continue
            seen.add(sid)
            todo.extend(t for t, _ in by_id[sid].targets())
        return seen

    # ---- what evaluations read ---------------------------------------------------------------
    def action_steps(self) -> list[str]:
        """Texts of process and decision steps, in order (what STEPScore compares)."""
        return [s.text for s in self.steps if s.kind != StepKind.terminal]

    def branching_decisions(self) -> int:
        """Decisions whose Yes and No lead to different steps."""
        return sum(1 for s in self.steps if s.kind == StepKind.decision and s.yes and s.no and s.yes != s.no)

    def changes_before_observing(self) -> list[str]:
        """Change steps some path reaches before any observe step (AOI: look before you touch)."""
        by_id = {s.id: s for s in self.steps}
        bad: set[str] = set()
        seen: set[str] = set()
        todo = [self.steps[0].id] if self.steps else []
        while todo:  # states: steps reached with nothing observed yet
            sid = todo.pop()
            if sid in seen or sid not in by_id:
                continue
            seen.add(sid)
            step = by_id[sid]
            if step.kind == StepKind.terminal:
                continue
            if step.action == Action.change:
                bad.add(sid)
                todo.extend(t for t, _ in step.targets())
            # an observe step (process or decision) ends the unobserved prefix
        return [s.id for s in self.steps if s.id in bad]

    def to_text(self) -> str:
        """Numbered steps with their branches, change steps marked, for terminals and logs."""
        number = {s.id: i + 1 for i, s in enumerate(self.steps)}
        lines = []
        for s in self.steps:
            mark = {"decision": "?", "terminal": "■", "process": "!" if s.action == Action.change else " "}
            lines.append(f"{number[s.id]:>2}.{mark[s.kind.value]} {s.text}")
            if s.kind == StepKind.decision:
                lines.append(f"      yes: go to {number.get(s.yes, '?')}; no: go to {number.get(s.no, '?')}")
        return "\n".join(lines)


def _check_step(s: Step, known: set[str]) -> None:
    if not s.text.strip():
        raise WorkflowError(f"step {s.id} has no text")
    for target, _ in s.targets():
        if target not in known:
            raise WorkflowError(f"step {s.id} leads to an unknown step {target}")
    if s.kind == StepKind.process and not s.next:
        raise WorkflowError(f"step {s.id} is a dead end (not terminal)")
    if s.kind == StepKind.decision:
        if not (s.yes and s.no):
            raise WorkflowError(f"decision {s.id} needs both a yes and a no branch")
        if s.action != Action.observe:
            raise WorkflowError(f"decision {s.id} must observe (a question changes nothing)")
    if s.kind == StepKind.terminal and (s.next or s.yes or s.no):
        raise WorkflowError(f"terminal step {s.id} has outgoing transitions")
    if s.kind != StepKind.decision and (s.yes or s.no):
        raise WorkflowError(f"step {s.id} has yes/no branches but is not a decision")


_YES = re.compile(r"^\s*(yes|y|true|ok|found|confirmed|pass(ed)?)\s*$", re.I)
_NO = re.compile(r"^\s*(no|n|false|not found|fail(ed)?)\s*$", re.I)


def attach_edges(steps: list[dict], edges: list) -> list[dict]:
    """Steps (dicts) with the transitions of `edges` written onto them.

    A process takes its single edge as `next`; a decision takes the edges labelled yes / no (or,
    unlabelled, the first as yes and the second as no). Anything else raises WorkflowError.
    """
    out: dict[str, list[tuple[str, str | None]]] = {}
    for e in edges:
        e = e if isinstance(e, dict) else e.model_dump()
        out.setdefault(e["source"], []).append((e["target"], e.get("label")))
    result = []
    for s in steps:
        s = {k: v for k, v in s.items() if k not in ("next", "yes", "no")}
        exits = out.get(s["id"], [])
        kind = s.get("kind")
        kind = kind.value if isinstance(kind, StepKind) else kind
        if kind == "process":
            if len(exits) > 1:
                raise WorkflowError(f"process step {s['id']} has {len(exits)} exits; make it a decision")
            if exits:
                s["next"] = exits[0][0]
        elif kind == "decision":
            s.update(_branches(s["id"], exits))
        elif exits:
            raise WorkflowError(f"terminal step {s['id']} has outgoing edges")
        result.append(s)
    return result


def _branches(step_id: str, exits: list[tuple[str, str | None]]) -> dict:
    if len(exits) != 2:
        raise WorkflowError(f"decision {step_id} needs exactly two branches, has {len(exits)}")
    (t1, l1), (t2, l2) = exits
    if (l1 and _NO.match(l1)) or (l2 and _YES.match(l2)):
        (t1, l1), (t2, l2) = (t2, l2), (t1, l1)
    return {"yes": t1, "no": t2}
