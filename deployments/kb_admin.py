"""Knowledge-base consolidation over HTTP, under /v1/admin/kb (admin keys only: deployments/auth/policy.py),
and the optional periodic job that files proposals (`cases.consolidate.periodic`).

    GET  /v1/admin/kb                              current version, versions, pending proposals
    POST /v1/admin/kb/consolidate                  a pending proposal from case memory (its diff)
    GET  /v1/admin/kb/proposals[/{id}]             proposals / one with its diff
    POST /v1/admin/kb/proposals/{id}/approve       a new version becomes current; Planners reload it
    POST /v1/admin/kb/proposals/{id}/reject
    POST /v1/admin/kb/rollback                     the version the current one was made from

The work is experts/knowledge/consolidate.py; proposals live beside the base, so the CLI and every ingress
replica see the same ones. The periodic job only proposes: applying stays an admin's decision.

No `from __future__ import annotations` here: FastAPI inside the Serve replica needs real annotation objects.
"""


import asyncio
import logging

from fastapi import APIRouter, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from deployments.auth import current_principal_id
from experts.knowledge.cases import CaseStore
from experts.knowledge.consolidate import ConsolidationError, Consolidator, Proposal, ProposalNotFound

log = logging.getLogger("flowrouter.kb_admin")

router = APIRouter()
CHECK_EVERY_S = 60.0  # how often the periodic job looks at its shared stamp (the interval itself is configured)


class ConsolidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "dry_run": 0 is a mistake, not false
    dry_run: bool = Field(default=False, description="Return what would be proposed without filing it.")


class ChangeView(BaseModel):
    kind: str = Field(description="add (a new node) or revise (an existing node's workflow).")
    node_id: str
    incident: str
    cases: list[str] = Field(description="Ticket ids of the cases behind the change.")
    verdicts: list[str]
    reason: str
    relevance: float | None = None
    old_steps: list[str] = Field(description="The node's workflow before (line form).")
    new_steps: list[str] = Field(description="The node's workflow after (line form).")


class ProposalView(BaseModel):
    id: str
    status: str = Field(description="pending, approved, rejected or stale.")
    base_version: str
    created: str
    origin: str = Field(description="cli, api or periodic.")
    version: str | None = Field(description="approved: the version it created.")
    decided_by: str | None
    added: int
    revised: int
    filed: bool = Field(description="False for a dry run or when nothing would change (nothing was stored).")
    diff: str = Field(description="The proposal as a reviewer reads it.")
    changes: list[ChangeView]


class ProposalList(BaseModel):
    current: str | None
    versions: list[str]
    proposals: list[ProposalView]


class KbInfo(BaseModel):
    directory: str
    current: str | None
    versions: list[str]
    previous: str | None = Field(description="The version the current one was made from (rollback target).")
    consolidation: dict = Field(description="The last approved proposal behind the current version, if any.")
    pending: list[str]


class RolledBack(BaseModel):
    rolled_back: str = Field(description="The version that was current.")
    current: str = Field(description="The version that is current now.")


_STATE: dict = {"consolidator": None, "periodic": False, "task": None}


def configure(knowledge_dir: str | None, cases: CaseStore | None, cfg):
    """This replica's consolidator (`cfg`: cases.consolidate)."""
    _STATE.update(consolidator=Consolidator(knowledge_dir, cases, cfg) if knowledge_dir else None,
                  periodic=bool(cfg.periodic and knowledge_dir and cases is not None))


def install(app: FastAPI) -> None:
    app.include_router(router)


def ensure_started() -> bool:
    """Start (or restart) the periodic job on the running loop when configured; False when it is not running."""
    if not _STATE["periodic"]:
        return False
    task = _STATE["task"]
    if task is not None and not task.done():
        return True
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    _STATE["task"] = loop.create_task(_periodic())
    return True


def stop() -> None:
    """Cancel the periodic job (it is started again by `ensure_started`)."""
    task = _STATE["task"]
    if task is not None:
        task.cancel()


async def _periodic() -> None:
    c: Consolidator = _STATE["consolidator"]
    while True:
        try:
            p = await asyncio.to_thread(c.run_periodic)
            if p is not None:
                log.info("consolidation: proposal %s filed (%d changes), waiting for an admin", p.id, len(p.changes))
        except Exception:  # a broken run must not end the job: the next interval tries again
            log.exception("consolidation: periodic run failed")
        await asyncio.sleep(CHECK_EVERY_S)


def _consolidator() -> Consolidator:
    c = _STATE["consolidator"]
    if c is None:
        raise HTTPException(409, "the service has no knowledge base (knowledge.docs)")
    return c


def _view(p: Proposal, filed: bool = True) -> ProposalView:
    s = p.summary()
    return ProposalView(id=p.id, status=p.status, base_version=p.base_version, created=p.created, origin=p.origin,
                        version=p.version, decided_by=p.decided_by, added=s["added"], revised=s["revised"],
                        filed=filed, diff=p.diff(),
                        changes=[ChangeView(**c.model_dump(include=set(ChangeView.model_fields))) for c in p.changes])


async def _call(fn, *args, **kw):
    try:
        return await asyncio.to_thread(fn, *args, **kw)
    except ProposalNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ConsolidationError as exc:
        raise HTTPException(409, str(exc)) from None


@router.get("/v1/admin/kb", response_model=KbInfo, tags=["knowledge"],
            summary="The knowledge base's current version, its versions and pending proposals")
async def kb_info() -> KbInfo:
    return KbInfo(**await _call(_consolidator().info))


@router.post("/v1/admin/kb/consolidate", response_model=ProposalView, tags=["knowledge"],
             summary="Propose new or revised incident nodes from case memory (applied only on approval)")
async def consolidate(body: ConsolidateRequest | None = None) -> ProposalView:
    c = _consolidator()
    if c.cases is None:
        raise HTTPException(409, "case memory is off (cases.enabled) or has no folder")
    dry = body is not None and body.dry_run
    p = await _call(c.propose, origin="api", save=not dry)
    return _view(p, filed=bool(p.changes) and not dry)


@router.get("/v1/admin/kb/proposals", response_model=ProposalList, tags=["knowledge"],
            summary="Consolidation proposals, oldest first")
async def list_proposals() -> ProposalList:
    c = _consolidator()
    ps = await _call(c.proposals)
    return ProposalList(current=c.store.current_version(), versions=c.store.versions(), proposals=[_view(p) for p in ps])


@router.get("/v1/admin/kb/proposals/{proposal_id}", response_model=ProposalView, tags=["knowledge"],
            summary="One proposal with its diff")
async def get_proposal(proposal_id: str) -> ProposalView:
    return _view(await _call(_consolidator().get, proposal_id))


@router.post("/v1/admin/kb/proposals/{proposal_id}/approve", response_model=ProposalView, tags=["knowledge"],
             summary="Apply a pending proposal: a new knowledge-base version becomes current (no restart)")
async def approve_proposal(proposal_id: str) -> ProposalView:
    p = await _call(_consolidator().approve, proposal_id, by=current_principal_id())
    log.info("consolidation: proposal %s approved by %r -> %s", p.id, p.decided_by, p.version)
    return _view(p)


@router.post("/v1/admin/kb/proposals/{proposal_id}/reject", response_model=ProposalView, tags=["knowledge"],
             summary="Close a pending proposal without applying it")
async def reject_proposal(proposal_id: str) -> ProposalView:
    return _view(await _call(_consolidator().reject, proposal_id, by=current_principal_id()))


@router.post("/v1/admin/kb/rollback", response_model=RolledBack, tags=["knowledge"],
             summary="Make the version the current one was made from current again")
async def rollback() -> RolledBack:
    old, new = await _call(_consolidator().rollback)
    log.info("knowledge base rolled back %s -> %s by %r", old, new, current_principal_id())
    return RolledBack(rolled_back=old, current=new)
