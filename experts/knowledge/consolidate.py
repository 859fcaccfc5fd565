"""Memory -> knowledge: repeated or corrected cases become new or revised incident nodes (Bian Que's consolidation).

    propose(kb_dir, cases, cfg)       a pending proposal: which nodes would be added or revised, old vs new steps
    approve(kb_dir, proposal_id)      a new knowledge-base version with those nodes; the `current` pointer flips
    reject(kb_dir, proposal_id)       the proposal is closed, nothing changes
    rollback(kb_dir)                  `current` points at the version the current one was made from

What a case becomes:

- an **edited** case whose ticket retrieves an existing node at `revise_relevance` or more, and whose correction
  keeps at least `revise_overlap` of that node's steps (word-overlap step F1), revises that node: the operator's
  correction becomes its reference workflow (and its diagnosis and mitigation steps). Several edits of one node:
  the latest wins, the others are listed as evidence. A correction that keeps almost nothing of the node's steps
  describes another incident (a ticket whose own runbook is missing retrieves a sibling), so it becomes a new
  node rather than overwriting the sibling.
- edited cases no node covers become a **new node** (similar ones, by `case_similarity`, one node for the group),
  named by the ticket and holding the latest correction. Accepted cases no node covers become one once
  `min_repeats` similar ones exist; accepted cases of a covered node agree with it and change nothing.

A proposal is a JSON file under `<base>/proposals/`, holding the new nodes whole (with their vectors, so approving
loads no model). Nothing reaches the base before an admin approves it, and approving refuses a proposal made on a
version that is no longer current (`stale`): the diff would not be what gets applied. The new version keeps the
documents' manifest entries, so a start-up that finds the documents unchanged serves it as it is, and records
which cases it consolidated, so they are not proposed again. Planner replicas pick the version up through
`KnowledgeBase.reload_if_changed` (the pointer moved), without a restart.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from core.config import ConsolidationConfig
from core.embeddings import shared_embedder
from core.stepscore import lexical_step_f1
from core.workflow import Action, StepKind, Workflow, WorkflowError, render_lines
from experts.knowledge.cases import Case, CaseStore
from experts.knowledge.documents import KnowledgeError
from experts.knowledge.graph import normalize_incident
from experts.knowledge.incident import IncidentNode
from experts.knowledge.retrieve import KnowledgeBase
from experts.knowledge.store import KnowledgeStore, write_atomic, write_version

PROPOSALS = "proposals"
LAST_RUN = ".last_periodic_run"
CONSOLIDATED_TAG = "consolidated"


class ConsolidationError(KnowledgeError):
    """A proposal that cannot be applied (unknown, already decided, stale) or a rollback with nowhere to go."""


class ProposalNotFound(ConsolidationError):
    """No proposal of that id."""


class NodeChange(BaseModel):
    """One incident node a proposal adds or revises."""

    kind: Literal["add", "revise"] = Field(description="add: a new node; revise: an existing node's workflow.")
    node_id: str
    incident: str = Field(description="The node's incident name.")
    cases: list[str] = Field(description="Ticket ids of the cases behind the change (the one used first).")
    verdicts: list[str] = Field(description="Their verdicts (accept / edit), in the same order.")
    case_keys: list[str] = Field(default_factory=list, description="Each case's feedback identity, recorded in the "
                                 "new version so a case is proposed again only when its feedback changes.")
    reason: str = Field(description="Why the cases make this change.")
    relevance: float | None = Field(default=None, description="revise: the retrieval score of the case's ticket "
                                                              "on the node.")
    old_steps: list[str] = Field(default_factory=list, description="The node's workflow before, in line form.")
    new_steps: list[str] = Field(description="The node's workflow after, in line form.")
    node: dict = Field(description="The node as it will be stored (IncidentNode fields).")
    name_vector: list[float] | None = Field(default=None, description="add: embedding of the incident name.")
    desc_vector: list[float] | None = Field(default=None, description="add: embedding of name + description.")


class Proposal(BaseModel):
    """A new knowledge-base version waiting for an admin: what would change, and on which version."""

    id: str
    created: str
    base_version: str = Field(description="The version the diff was computed on (and that approving builds on).")
    status: Literal["pending", "approved", "rejected", "stale"] = "pending"
    changes: list[NodeChange] = Field(default_factory=list)
    cases_revision: int | None = Field(default=None, description="Case-store revision the proposal read.")
    fingerprint: str = Field(default="", description="Hash of the base version and the changes (duplicates).")
    version: str | None = Field(default=None, description="approved: the version it created.")
    decided_by: str | None = Field(default=None, description="Who approved or rejected it (API key id or user).")
    decided: str | None = None
    origin: str = Field(default="cli", description="cli, api or periodic.")

    def summary(self) -> dict:
        return {"id": self.id, "status": self.status, "base_version": self.base_version, "created": self.created,
                "added": sum(c.kind == "add" for c in self.changes),
                "revised": sum(c.kind == "revise" for c in self.changes), "version": self.version,
                "origin": self.origin}

    def diff(self) -> str:
        """The proposal as a reviewer reads it: every added and revised node, old vs new steps."""
        s = self.summary()
        out = [f"proposal {self.id} on {self.base_version} ({self.status}): {s['added']} added, "
               f"{s['revised']} revised" + (f" -> {self.version}" if self.version else "")]
        for c in self.changes:
            cases = ", ".join(f"case:{t} ({v})" for t, v in zip(c.cases, c.verdicts))
            mark = "+" if c.kind == "add" else "~"
            out.append(f"\n{mark} {'added' if c.kind == 'add' else 'revised'} {c.node_id} \"{c.incident}\"  "
                       f"from {cases}")
            out.append(f"  {c.reason}")
            if c.kind == "add":
                out.extend(f"  + {line}" for line in c.new_steps)
            else:
                out.extend(f"  {line}" for line in difflib.ndiff(c.old_steps, c.new_steps) if not line.startswith("?"))
        if not self.changes:
            out.append("  (no change)")
        return "\n".join(out)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def step_lines(steps: list[dict] | Workflow | None) -> list[str]:
    """A workflow in line form, one string a step ([] for none); steps the line form cannot carry are listed."""
    if not steps:
        return []
    wf = steps if isinstance(steps, Workflow) else Workflow.model_validate({"steps": steps})
    try:
        return render_lines(wf).splitlines()
    except WorkflowError:
        return [f"{s.id} [{s.kind.value}] {s.text}" for s in wf.steps]


def _stored_steps(wf: Workflow) -> list[dict]:
    """Steps as a node stores them: without citations (they named what the answer was grounded in)."""
    return [s.model_dump(mode="json", exclude_none=True, exclude={"source"}) for s in wf.steps]


def _with_workflow(node: dict, wf: Workflow) -> dict:
    """`node` with `wf` as its reference workflow, and diagnosis / mitigation steps that agree with it."""
    acts = [s for s in wf.steps if s.kind != StepKind.terminal]
    return {**node, "workflow": _stored_steps(wf),
            "diagnosis_steps": [s.text for s in acts if s.action != Action.change],
            "mitigation_steps": [s.text for s in acts if s.action == Action.change]}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "case"


def new_node_id(ticket_id: str) -> str:
    return f"n-case-{_slug(ticket_id)}"


def _case_tags(case: Case, kb: KnowledgeBase) -> list[str]:
    """The tags of the nodes the case's answer was grounded in (so the expert scopes that reached them reach it)."""
    tags: set[str] = set()
    for item in case.knowledge:
        if item.kind == "node" and (node := kb.node(item.id)) is not None:
            tags |= set(node.tags)
    return sorted(tags | {CONSOLIDATED_TAG})


def _new_node(group: list[Case], lead: Case, kb: KnowledgeBase) -> dict:
    title = lead.title
    description = lead.text.split("\n", 1)[1].strip() if "\n" in lead.text else ""
    tags = sorted({t for c in group for t in _case_tags(c, kb)})
    node = IncidentNode(id=new_node_id(group[0].ticket_id), key=normalize_incident(title), incident=title,
                        failure_description=description[:500], typical_cases=[c.title for c in group],
                        notes=f"Consolidated from {len(group)} operator case(s).", tags=tags,
                        sources=[c.id for c in group])
    return _with_workflow(node.model_dump(mode="json"), lead.workflow)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n == 0, 1, n)


def _case_vectors(rows: list[tuple[int, Case, np.ndarray | None]], embedder) -> np.ndarray:
    """The stored case vectors (written by the Planner replicas), the missing ones embedded here."""
    vecs = [v for _, _, v in rows]
    missing = [i for i, v in enumerate(vecs) if v is None]
    dim = int(embedder.dim)
    if missing or any(len(v) != dim for v in vecs if v is not None):
        fresh = embedder.encode([c.text for _, c, _ in rows], role="passage")
        vecs = list(fresh)
    return _unit(np.stack(vecs).astype(np.float32)) if vecs else np.zeros((0, dim), np.float32)


def _overlap(case: Case, node) -> float:
    """How much of the node's workflow (or its steps, without one) the case's workflow keeps (word-overlap F1)."""
    steps = [s["text"] for s in node.workflow if s.get("kind") != "terminal"] if node.workflow else \
        [*node.diagnosis_steps, *node.mitigation_steps]
    return lexical_step_f1(case.workflow.action_steps(), steps)


def _fingerprint(base: str, changes: list[NodeChange]) -> str:
    blob = json.dumps([base, [(c.kind, c.node_id, c.node) for c in changes]], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Consolidator:
    """Proposals for one knowledge base, from one case store."""

    def __init__(self, kb_dir: str | Path, cases: CaseStore | None = None,
                 cfg: ConsolidationConfig | None = None, embedder=None):
        self.store = KnowledgeStore(kb_dir)
        self.cases = cases
        self.cfg = cfg or ConsolidationConfig()
        self._embedder = embedder

    @property
    def folder(self) -> Path:
        return self.store.root / PROPOSALS

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = shared_embedder()
        return self._embedder

    # ---- proposals on disk --------------------------------------------------------------------
    def _path(self, proposal_id: str) -> Path:
        if not re.fullmatch(r"p-[0-9]{8}T[0-9]{6}-[0-9a-f]{6}", proposal_id):
            raise ProposalNotFound(f"no proposal {proposal_id!r}")
        return self.folder / f"{proposal_id}.json"

    def get(self, proposal_id: str) -> Proposal:
        path = self._path(proposal_id)
        if not path.exists():
            raise ProposalNotFound(f"no proposal {proposal_id!r}")
        return Proposal.model_validate_json(path.read_text(encoding="utf-8"))

    def proposals(self) -> list[Proposal]:
        if not self.folder.is_dir():
            return []
        return sorted((Proposal.model_validate_json(p.read_text(encoding="utf-8"))
                       for p in self.folder.glob("p-*.json")), key=lambda p: p.id)

    def _save(self, p: Proposal) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / f"{p.id}.json", p.model_dump_json(indent=1))

    # ---- propose --------------------------------------------------------------------------------
    def changes(self) -> tuple[str, list[NodeChange], int | None]:
        """(base version, the changes the cases make to it, case-store revision)."""
        if self.cases is None:
            raise ConsolidationError("no case store: case memory is off (cases.enabled) or has no folder")
        base = self.store.current_version()
        if base is None:
            raise ConsolidationError(f"no knowledge base in {self.store.root}")
        kb = KnowledgeBase.open(self.store.root, embedder=self.embedder)
        revision = self.cases.revision()
        done = kb.manifest.get("consolidation", {}).get("cases", {})
        # A case consolidated into this base is not proposed again until its feedback changes.
        rows = [r for r in self.cases.rows() if done.get(r[1].ticket_id) != _case_key(r[1])]
        if not rows:
            return base, [], revision
        vecs = _case_vectors(rows, self.embedder)
        cases = [c for _, c, _ in rows]
        revisions: dict[str, list[tuple[Case, float]]] = {}
        loose: list[int] = []
        for i, case in enumerate(cases):
            ctx = kb.retrieve(case.text, k_chunks=3, k_nodes=1, min_relevance=self.cfg.revise_relevance)
            node = ctx.nodes[0] if ctx.matched and ctx.nodes else None
            if node is not None and case.verdict == "edit" and _overlap(case, node) < self.cfg.revise_overlap:
                node = None  # a correction that keeps nothing of the node's workflow is about another incident
            if node is None:
                loose.append(i)
            elif case.verdict == "edit":
                revisions.setdefault(node.id, []).append((case, float(node.score)))
            # an accepted case of a covered node agrees with it: nothing to change
        out: list[NodeChange] = []
        for node_id, found in revisions.items():
            found.sort(key=lambda cs: cs[0].created, reverse=True)
            lead, score = found[0]
            node = kb.node(node_id)
            change = self._revision(node.model_dump(mode="json", exclude={"score"}), lead, [c for c, _ in found],
                                    f"edited ticket retrieves this node (score {score:.2f} >= "
                                    f"{self.cfg.revise_relevance}): the correction becomes its workflow")
            if change is not None:
                change.relevance = round(score, 4)
                out.append(change)
        out.extend(self._new_nodes([cases[i] for i in loose], vecs[loose] if loose else vecs[:0], kb))
        return base, out, revision

    def _revision(self, node: dict, lead: Case, group: list[Case], reason: str) -> NodeChange | None:
        old = step_lines(node.get("workflow"))
        new_node = _with_workflow(node, lead.workflow)
        new_node["typical_cases"] = list(dict.fromkeys([*node.get("typical_cases", []), *(c.title for c in group)]))
        new_node["sources"] = list(dict.fromkeys([*node.get("sources", []), *(c.id for c in group)]))
        new = step_lines(new_node["workflow"])
        if new == old:
            return None
        return NodeChange(kind="revise", node_id=node["id"], incident=node["incident"],
                          cases=[c.ticket_id for c in group], verdicts=[c.verdict for c in group],
                          case_keys=[_case_key(c) for c in group], reason=reason,
                          old_steps=old, new_steps=new, node=new_node)

    def _new_nodes(self, cases: list[Case], vecs: np.ndarray, kb: KnowledgeBase) -> list[NodeChange]:
        """Groups of similar uncovered cases (edits first, newest first) -> one new node each."""
        order = sorted(range(len(cases)), key=lambda i: (cases[i].verdict != "edit", -cases[i].created))
        taken: set[int] = set()
        out = []
        for i in order:
            if i in taken:
                continue
            group = [j for j in order if j not in taken and float(vecs[i] @ vecs[j]) >= self.cfg.case_similarity]
            taken.update(group)
            members = [cases[j] for j in group]
            edits = [c for c in members if c.verdict == "edit"]
            if not edits and len(members) < self.cfg.min_repeats:
                continue
            lead = edits[0] if edits else members[0]
            why = (f"{len(edits)} correction(s)" if edits else f"{len(members)} accepted repeats") + \
                " of an incident no node covers"
            node = _new_node(members, lead, kb)
            existing = kb.node(node["id"])
            if existing is not None:  # consolidated before: this is a revision of that node
                change = self._revision(existing.model_dump(mode="json", exclude={"score"}), lead, members,
                                        why + " (its consolidated node)")
                if change is not None:
                    out.append(change)
                continue
            parsed = IncidentNode.model_validate(node)
            name, desc = self.embedder.encode([parsed.name_text(), parsed.description_text()])  # as builds do
            out.append(NodeChange(kind="add", node_id=node["id"], incident=node["incident"],
                                  cases=[c.ticket_id for c in members], verdicts=[c.verdict for c in members],
                                  case_keys=[_case_key(c) for c in members], reason=why,
                                  new_steps=step_lines(node["workflow"]), node=node,
                                  name_vector=[float(x) for x in name], desc_vector=[float(x) for x in desc]))
        return out

    def propose(self, origin: str = "cli", save: bool = True) -> Proposal:
        """A pending proposal of what the cases would change (an identical pending one is returned as it is)."""
        base, changes, revision = self.changes()
        fingerprint = _fingerprint(base, changes)
        if changes:
            for p in self.proposals():
                if p.status == "pending" and p.fingerprint == fingerprint:
                    return p
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        p = Proposal(id=f"p-{stamp}-{uuid.uuid4().hex[:6]}", created=_now(), base_version=base, changes=changes,
                     cases_revision=revision, fingerprint=fingerprint, origin=origin)
        if save and changes:
            self._save(p)
        return p

    def run_periodic(self, interval_s: float | None = None, now: float | None = None) -> Proposal | None:
        """The periodic job: at most once per interval across processes, a proposal when there is a change and
        none is pending already; None when it did not run or found nothing."""
        interval = self.cfg.interval_s if interval_s is None else interval_s
        now = time.time() if now is None else now
        stamp = self.store.root / PROPOSALS / LAST_RUN
        with self.store.lock():
            try:
                if now - stamp.stat().st_mtime < interval:
                    return None
            except FileNotFoundError:
                pass
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.touch()
            os.utime(stamp, (now, now))
        if any(p.status == "pending" for p in self.proposals()):
            return None
        p = self.propose(origin="periodic")
        return p if p.changes else None

    # ---- decide ---------------------------------------------------------------------------------
    def approve(self, proposal_id: str, by: str | None = None) -> Proposal:
        """Write the proposal as a new version on its base and make it current."""
        with self.store.lock():
            p = self.get(proposal_id)
            if p.status != "pending":
                raise ConsolidationError(f"proposal {p.id} is {p.status}, not pending")
            current = self.store.current_version()
            if current != p.base_version:
                p.status, p.decided, p.decided_by = "stale", _now(), by
                self._save(p)
                raise ConsolidationError(f"proposal {p.id} was made on {p.base_version}, but {current} is current "
                                         "now; run consolidate again")
            data = self.store.read(p.base_version)
            index = {n.id: i for i, n in enumerate(data.nodes)}
            added_name, added_desc = [], []
            for c in p.changes:
                node = IncidentNode.model_validate(c.node)
                if c.kind == "revise":
                    if c.node_id not in index:
                        raise ConsolidationError(f"proposal {p.id}: node {c.node_id} is not in {p.base_version}")
                    data.nodes[index[c.node_id]] = node
                else:
                    data.nodes.append(node)
                    added_name.append(c.name_vector)
                    added_desc.append(c.desc_vector)
            if added_name:
                data.name_vectors = np.concatenate([data.name_vectors, np.asarray(added_name, np.float32)])
                data.desc_vectors = np.concatenate([data.desc_vectors, np.asarray(added_desc, np.float32)])
            data.manifest = self._manifest(data.manifest, p, by)
            with self.store.new_version() as (version, folder):
                data.manifest["version"] = version
                write_version(folder, data)
            p.status, p.version, p.decided, p.decided_by = "approved", version, _now(), by
            self._save(p)
            return p

    def _manifest(self, prev: dict, p: Proposal, by: str | None) -> dict:
        done = dict(prev.get("consolidation", {}).get("cases", {}))
        for c in p.changes:
            done.update(zip(c.cases, c.case_keys))
        stats = dict(prev.get("stats", {}))
        stats.update(nodes=stats.get("nodes", 0) + sum(c.kind == "add" for c in p.changes),
                     consolidated_nodes=len({c.node_id for c in p.changes}))
        nodes = dict(prev.get("consolidation", {}).get("nodes", {}))
        for c in p.changes:
            nodes.setdefault(c.node_id, c.kind)
        return {**prev, "created": _now(), "previous": p.base_version, "stats": stats,
                "consolidation": {"proposal": p.id, "approved_by": by, "approved": _now(),
                                  "changes": [{"kind": c.kind, "node": c.node_id, "cases": c.cases} for c in p.changes],
                                  "cases": done, "nodes": nodes}}

    def reject(self, proposal_id: str, by: str | None = None) -> Proposal:
        with self.store.lock():
            p = self.get(proposal_id)
            if p.status != "pending":
                raise ConsolidationError(f"proposal {p.id} is {p.status}, not pending")
            p.status, p.decided, p.decided_by = "rejected", _now(), by
            self._save(p)
            return p

    def rollback(self) -> tuple[str, str]:
        """Point `current` at the version the current one was made from; (from, to)."""
        with self.store.lock():
            current = self.store.current_version()
            if current is None:
                raise ConsolidationError(f"no knowledge base in {self.store.root}")
            previous = self.store.manifest(current).get("previous")
            if not previous or previous not in self.store.versions():
                raise ConsolidationError(f"{current} has no earlier version to roll back to"
                                         + (f" ({previous} was pruned)" if previous else ""))
            self.store.set_current(previous)
            return current, previous

    def info(self) -> dict:
        current = self.store.current_version()
        m = self.store.manifest(current) if current else {}
        return {"directory": str(self.store.root), "current": current, "versions": self.store.versions(),
                "previous": m.get("previous"), "consolidation": {k: v for k, v in m.get("consolidation", {}).items()
                                                                 if k not in ("cases", "nodes")},
                "pending": [p.id for p in self.proposals() if p.status == "pending"]}


def _case_key(case: Case) -> str:
    """What identifies a case's feedback: a later verdict on the same ticket is a new case to consolidate."""
    return f"{case.feedback_id}:{case.created}"
