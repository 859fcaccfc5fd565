"""Training data from queries only: runbook cases split into train / held-out, operator feedback, and
the three knowledge levels that turn one query into good / fair / poor workflows.

No reference workflow is ever used for training (as in FlowXpert): the Planner learns from the
Scorer's reward, the Scorer from the order of knowledge levels and from operators' verdicts. The
references of held-out cases are only read by the gate's STEPScore. Operators' corrections are the one
exception (AOI's corrective signal): an edited workflow is a Planner target (`planner_examples`: SFT on
the correction, and the pair correction over the candidate it replaced), and a rejected or corrected
candidate is a negative for the Planner and, through `read_feedback`, for the Scorer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

from pydantic import BaseModel, Field

from core.schemas import Ticket
from core.workflow import Workflow, WorkflowError, linear_workflow, render_lines
from leaderboard.workflow_cases import WorkflowCase

log = logging.getLogger(__name__)


class TrainQuery(BaseModel):
    """A query the Planner is trained on."""

    id: str = Field(description="Case id, or `ticket:<id>` for an accepted ticket.")
    text: str = Field(description="What the Planner is asked (ticket title + description).")
    source: str | None = Field(default=None, description="Runbook file the query came from (retrieval may hide "
                                                         "it when training on held-out knowledge).")
    origin: str = Field(default="runbook", description="runbook, feedback (accepted), correction (edited or "
                                                       "rejected) or file.")
    target: str | None = Field(default=None, description="correction: the operator's workflow in line form (RL "
                                                         "rewards following it).")
    negative: str | None = Field(default=None, description="correction: the rejected or corrected candidate in line "
                                                           "form (RL rewards moving away from it).")


class FeedbackItem(BaseModel):
    """An operator's verdict on a workflow the service returned."""

    ticket_id: str
    ticket: str = Field(description="Ticket text as the Planner and Scorer saw it.")
    workflow: dict = Field(description="The judged candidate's workflow (steps + edges).")
    verdict: str = Field(description="accept, reject or edit (the workflow is the candidate the operator "
                                     "corrected: a negative, like a rejected one).")
    expert: str | None = Field(default=None, description="Expert that wrote the workflow.")
    correction: dict | None = Field(default=None, description="edit: the operator's corrected workflow (steps).")


def _unit(seed: int, key: str) -> float:
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_cases(cases: list[WorkflowCase], holdout_fraction: float, seed: int = 0
                ) -> tuple[list[WorkflowCase], list[WorkflowCase]]:
    """(train, held-out) by a hash of each case id: a case stays on its side when others are added."""
    train, held = [], []
    for c in sorted(cases, key=lambda c: c.id):
        (held if _unit(seed, c.id) < holdout_fraction else train).append(c)
    if not held and len(train) > 1:  # tiny sets: keep at least one case out
        held.append(train.pop())
    return train, held


def sample(items: list, limit: int | None, seed: int = 0) -> list:
    """A deterministic sample of at most `limit` items, in their original order."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), limit))
    return [x for i, x in enumerate(items) if i in keep]


def case_queries(cases: list[WorkflowCase]) -> list[TrainQuery]:
    return [TrainQuery(id=c.id, text=c.query, source=c.source, origin="runbook") for c in cases]


def read_query_file(path: str | Path) -> list[TrainQuery]:
    """Queries from a file: one per line (.txt), or JSONL rows with `query`, `text` or title+description."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"query file not found: {p}")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if p.suffix in (".jsonl", ".json") or line.startswith("{"):
            row = json.loads(line)
            text = row.get("query") or row.get("text") or \
                f"{row.get('title', '')}\n{row.get('description', '')}".strip()
            qid = str(row.get("id") or f"{p.stem}:{n}")
        else:
            text, qid = line, f"{p.stem}:{n}"
        if text:
            out.append(TrainQuery(id=qid, text=text, origin="file"))
    return out


def read_feedback(rows) -> list[FeedbackItem]:
    """Operator verdicts from the service's ticket store rows (`TicketStore.feedback()`, which the CLI reads
    and passes in: training does not know where the service keeps its state).

    The latest verdict per (ticket, candidate) wins; tickets without a stored result are skipped.
    """

    latest: dict[tuple[str, int], FeedbackItem] = {}
    for row in rows:
        result = row.get("result") or {}
        cands = result.get("candidates") or []
        idx = row.get("candidate")
        idx = result.get("best_index", 0) if idx is None else idx
        if not cands or idx is None or idx >= len(cands):
            continue
        try:
            ticket = Ticket.model_validate(row["request"]).text()
        except Exception:  # a request the current schema no longer accepts: use its raw text
            req = row.get("request") or {}
            ticket = f"{req.get('title', '')}\n{req.get('description', '')}".strip()
        wf = cands[idx].get("workflow") or {}
        correction = row.get("workflow") if row["verdict"] == "edit" else None
        latest[(row["ticket_id"], idx)] = FeedbackItem(
            ticket_id=row["ticket_id"], ticket=ticket, workflow={"steps": wf.get("steps", []),
                                                                 "edges": wf.get("edges", [])},
            verdict=row["verdict"], expert=result.get("expert"), correction=correction)
    return list(latest.values())


class PlannerExample(BaseModel):
    """A Planner training example from operator feedback, in the line form the Planner writes."""

    ticket_id: str
    ticket: str = Field(description="Ticket text (the Planner's query).")
    expert: str | None = None
    kind: str = Field(description="edit (chosen: the correction, rejected: the corrected candidate), accept "
                                  "(chosen only) or reject (rejected only: a negative).")
    chosen: str | None = Field(default=None, description="Workflow to imitate (SFT target; the pair's chosen).")
    rejected: str | None = Field(default=None, description="Workflow to move away from (the pair's rejected).")

    @property
    def is_pair(self) -> bool:
        return self.chosen is not None and self.rejected is not None


def _lines(workflow: dict | None) -> str | None:
    """A stored workflow in line form; None when it is not a valid workflow the line form can carry."""
    if not workflow or not workflow.get("steps"):
        return None
    try:
        return render_lines(Workflow.model_validate({"steps": workflow["steps"]}).validate_graph())
    except (WorkflowError, ValueError):
        return None


def planner_examples(items: list[FeedbackItem]) -> list[PlannerExample]:
    """Operator feedback as Planner targets: an edit gives an SFT target and a chosen/rejected pair (the
    correction over the candidate it replaced), an accept a target, a reject a negative. A rejected
    candidate of a ticket that was later corrected is paired with that correction too."""
    corrections = {f.ticket_id: _lines(f.correction) for f in items if f.verdict == "edit"}
    out = []
    for f in items:
        candidate = _lines(f.workflow)
        if f.verdict == "edit":
            chosen, rejected = corrections.get(f.ticket_id), candidate
        elif f.verdict == "accept":
            chosen, rejected = candidate, None
        else:
            chosen, rejected = corrections.get(f.ticket_id), candidate
        if chosen is None and rejected is None:
            continue
        kind = f.verdict if f.verdict != "reject" or chosen is None else "edit"
        out.append(PlannerExample(ticket_id=f.ticket_id, ticket=f.ticket, expert=f.expert, kind=kind,
                                  chosen=chosen, rejected=rejected if rejected != chosen else None))
    return out


def feedback_queries(items: list[FeedbackItem], expert: str | None = None, roots: set[str] | None = None
                     ) -> list[TrainQuery]:
    """Tickets whose workflow an operator accepted, as Planner queries (for `expert`, or any expert
    whose name is in `roots`, e.g. the expert and its earlier trained versions)."""
    seen, out = set(), []
    for f in items:
        if f.verdict != "accept" or f.ticket_id in seen:
            continue
        if expert is not None and f.expert != expert and not (roots and f.expert in roots):
            continue
        seen.add(f.ticket_id)
        out.append(TrainQuery(id=f"ticket:{f.ticket_id}", text=f.ticket, origin="feedback"))
    return out


def _in_family(name: str | None, expert: str | None, roots: set[str] | None) -> bool:
    return expert is None or name == expert or bool(roots and name in roots)


def correction_queries(examples: list[PlannerExample], expert: str | None = None, roots: set[str] | None = None
                       ) -> list[TrainQuery]:
    """Edited and rejected tickets of `expert` (or its family `roots`) as Planner queries that carry their
    correction (`target`) and their rejected candidate (`negative`) for the RL reward."""
    out = []
    for e in examples:
        if e.kind == "accept" or not _in_family(e.expert, expert, roots):
            continue
        out.append(TrainQuery(id=f"ticket:{e.ticket_id}", text=e.ticket, origin="correction", target=e.chosen,
                              negative=e.rejected))
    by_id: dict[str, TrainQuery] = {}
    for q in out:  # a ticket judged on two candidates: keep the query that has the correction
        if q.id not in by_id or (by_id[q.id].target is None and q.target is not None):
            by_id[q.id] = q
    return list(by_id.values())


def correction_pairs(examples: list[PlannerExample], expert: str | None = None, roots: set[str] | None = None
                     ) -> list[PlannerExample]:
    """The examples with both sides (the correction over the candidate it replaced): SFT target and DPO pair."""
    return [e for e in examples if e.is_pair and _in_family(e.expert, expert, roots)]


# ---- knowledge levels -------------------------------------------------------------------------
def reversed_context(context):
    """The same knowledge with every step list and every excerpt read backwards (the 'fair' level):
    all the facts are there, in the wrong order."""
    if context is None:
        return None

    ctx = context.model_copy(deep=True)
    for node in ctx.nodes:
        steps = list(node.diagnosis_steps or []) + list(node.mitigation_steps or [])
        node.diagnosis_steps = steps[::-1]
        node.mitigation_steps = []
        try:  # the reference workflow the Planner is shown: the same steps, backwards, no branches
            node.workflow = [s.model_dump(mode="json", exclude_none=True)
                             for s in linear_workflow(steps[::-1]).steps] if steps else []
        except WorkflowError:
            node.workflow = []
    for chunk in ctx.chunks:
        lines = [x for x in chunk.text.splitlines() if x.strip()]
        chunk.text = "\n".join(lines[::-1])
    ctx.chunks = ctx.chunks[::-1]
    ctx.nodes = ctx.nodes[::-1]
    return ctx


LEVELS = ("good", "fair", "poor")
LEVEL_SCORE = {"good": 5, "fair": 3, "poor": 1}
PAIRS = (("good", "fair"), ("good", "poor"), ("fair", "poor"))


class ExcludingRetriever:
    """Retrieval that can hide a query's own runbook (held-out knowledge)."""

    def __init__(self, kb, exclude_own_doc: bool):
        self.kb = kb
        self.exclude_own_doc = exclude_own_doc

    def retrieve(self, query: str, source: str | None, k_chunks: int, k_nodes: int, hide: bool | None = None):
        hide = self.exclude_own_doc if hide is None else hide
        exclude = (source,) if hide and source is not None else ()
        return self.kb.retrieve(query, k_chunks=k_chunks, k_nodes=k_nodes, exclude_sources=exclude)
