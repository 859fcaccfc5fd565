"""HTTP front door (FastAPI through Ray Serve): tickets in, best workflow out.

The ingress owns the request path's orchestration: classify -> route by the live map -> the
chosen Planner writes N candidates -> the N candidates are scored in parallel across Scorer
replicas -> best of N. It never runs a model itself.

No `from __future__ import annotations` here: Serve ships this class by value, and FastAPI must
see real annotation objects (string annotations would not resolve in the replica).
"""


import asyncio
import logging
import time
import uuid
from typing import Any

import ray
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from core.config import FlowRouterConfig
from core.schemas import (
    Candidate,
    ClassifyRequest,
    ClassifyResponse,
    Feedback,
    KnowledgeItem,
    PlanRequest,
    PlanResponse,
    ScoreRequest,
    ScoreResponse,
    Ticket,
    TicketResult,
    WorkflowOut,
    corrected_workflow,
)
from core.task_map import MapError, TaskMap
from core.workflow import Workflow, WorkflowError
from deployments import auth, console, kb_admin, openai_api
from deployments.admission import Overloaded
from deployments.alertmanager import AlertmanagerPayload, AlertmanagerReceipt, AlertReceiver, ticket_fields
from deployments.flood import AlreadySubmitted, Deferred, FloodGate
from deployments.map_registry import get_registry
from deployments.prometheus import PrometheusExporter
from deployments.ticket_store import DONE, TicketStore
from deployments.webhooks import WebhookManager
from experts.knowledge.cases import Case, CaseStore
from experts.knowledge.store import KnowledgeStore
from experts.scorer import best_index
from router.examples import load_tasks
from router.routing import get_router

log = logging.getLogger("flowrouter.ingress")

MAP_REFRESH_S = 1.0
MAX_BODY_BYTES = 2_000_000

app = FastAPI(
    title="FlowRouter",
    version="0.1.0",
    description="Incident tickets to troubleshooting workflows written by the best expert model.",
)
auth.install(app)     # API keys, roles, per-key rate limits (401/403/429), OpenAPI security: deployments/auth/
console.install(app)  # the operator web console at /: deployments/console.py
kb_admin.install(app)  # /v1/admin/kb: case memory consolidated into the knowledge base: deployments/kb_admin.py


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tickets: list[Ticket] = Field(min_length=1, description="Tickets to solve together.")


class BatchResult(BaseModel):
    results: list[TicketResult]


class TicketFailed(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class _Accepted(Exception):
    """A synchronous ticket was accepted but finishes later: answer 202 with its status URL."""

    def __init__(self, ticket_id: str, reason: str, retry_after_s: int):
        super().__init__(reason)
        self.ticket_id, self.reason, self.retry_after_s = ticket_id, reason, retry_after_s

    def response(self) -> JSONResponse:
        url = f"/v1/tickets/{self.ticket_id}"
        return JSONResponse(status_code=202, headers={"Location": url, "Retry-After": str(self.retry_after_s)},
                            content={"ticket_id": self.ticket_id, "status": "queued", "status_url": url,
                                     "detail": self.reason})


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    if openai_api.handles(request.url.path):
        return openai_api.validation_error(exc)  # OpenAI clients read {"error": {...}}
    # Keep pydantic's field-by-field reasons; never echo the (possibly huge, untrusted) input back.
    errors = [{"loc": list(e.get("loc", [])), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": "invalid request", "errors": errors})


@app.exception_handler(_Accepted)
async def _accepted_later(request: Request, exc: _Accepted):
    return exc.response()


@app.middleware("http")
async def _limit_body(request: Request, call_next):
    length = request.headers.get("content-length")
    if length is not None:
        try:
            too_big = int(length) > MAX_BODY_BYTES
        except ValueError:
            return JSONResponse(status_code=400, content={"detail": "invalid Content-Length header"})
        if too_big:
            return JSONResponse(status_code=413,
                                content={"detail": f"request body over {MAX_BODY_BYTES} bytes"})
    return await call_next(request)


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, config: dict, classifier, planners: dict, scorer, knowledge_dir: str | None = None):
        self.cfg = FlowRouterConfig.model_validate(config)
        auth.configure(self.cfg.auth, self.cfg.serve.state_dir, self.cfg.serve.host)
        console.configure(self.cfg.console, self.cfg.serve.state_dir, self.cfg.auth.mode)
        self.classifier = classifier
        self.planners = planners
        self.scorer = scorer
        self.tasks = [t.name for t in load_tasks(self.cfg.tasks.tasks)]
        self.experts = [e.name for e in self.cfg.experts]
        self.router = get_router("map")
        state_dir = self.cfg.serve.state_dir
        initial = TaskMap.load(self.cfg.map)
        self.registry = get_registry(f"{state_dir}/maps", initial.model_dump(), self.tasks, self.experts)
        self.task_map = TaskMap.model_validate(ray.get(self.registry.current.remote()))
        self.store = TicketStore(f"{state_dir}/tickets.sqlite")
        # Case memory: written here when feedback arrives, read by every Planner replica (experts/knowledge/cases.py).
        cases_dir = self.cfg.cases.store_dir(state_dir)
        self.cases = CaseStore(cases_dir) if self.cfg.cases.enabled and cases_dir else None
        self._checked = time.monotonic()
        self._map_lock = asyncio.Lock()
        # Ticket floods: cache + single flight, admission control, durable async worker (deployments/flood.py).
        self.knowledge = KnowledgeStore(knowledge_dir) if knowledge_dir else None
        self.flood = FloodGate(self.cfg, self.store, self._compute, self.current_map, grounding=self.grounding)
        self.flood.worker.ensure_started()
        # GET /metrics: every node's Ray metrics agent plus the store, service-wide (deployments/prometheus.py).
        self.prometheus = PrometheusExporter(self.store.counts)
        # Results out: finished async tickets POSTed to webhooks, signed and retried (deployments/webhooks.py).
        self.webhooks = WebhookManager(self.cfg.webhooks, self.store, self.cfg.serve.base_url())
        self.flood.on_finished = self.webhooks.ticket_finished
        self.webhooks.ensure_started()
        # Alertmanager's webhook: firing alerts in as async tickets, resolved ones closing them.
        self.alerts = AlertReceiver(self.flood, self.store, self.cfg.serve.max_ticket_chars)
        # Memory -> knowledge: proposals from the cases, approved by an admin.
        kb_admin.configure(knowledge_dir, self.cases, self.cfg.cases.consolidate)

    def grounding(self) -> str:
        """What answers are grounded in now: the current knowledge-base version and case-memory revision. Part
        of the result cache's key, so an approval, a rollback or a case (from any replica or the CLI) is seen
        by the next ticket instead of a cached answer that predates it."""
        kb = self.knowledge.current_version() if self.knowledge is not None else ""
        return f"{kb}:{self.cases.revision() if self.cases is not None else 0}"

    # ---- live map --------------------------------------------------------------------------
    async def current_map(self) -> TaskMap:
        """The map for a new request; re-read from the registry at most once a second."""
        if time.monotonic() - self._checked >= MAP_REFRESH_S:
            async with self._map_lock:
                if time.monotonic() - self._checked >= MAP_REFRESH_S:
                    version = await self.registry.version.remote()
                    if version != self.task_map.version:
                        self.task_map = TaskMap.model_validate(await self.registry.current.remote())
                        log.info("now routing with map %s", version)
                    self._checked = time.monotonic()
        return self.task_map

    # ---- the request path ------------------------------------------------------------------
    async def solve(self, ticket: Ticket, n: int | None = None, expert: str | None = None,
                    task_map: TaskMap | None = None) -> TicketResult:
        text = ticket.text()
        self.precheck(ticket, expert)
        task_map = task_map or await self.current_map()  # the whole request uses this snapshot
        n = n or self.cfg.planner.candidates
        timings: dict[str, float] = {}
        # A critical ticket has queues of its own at the Planner and Scorer, served first (deployments/priority.py);
        # the others hold back before each model stage while one computes.
        critical = ticket.is_critical()
        t0 = time.perf_counter()
        held = await self._yield_to_critical(critical)
        tc = time.perf_counter()
        cls_out: ClassifyResponse = await self.classifier.classify.remote(ClassifyRequest(text=text))
        cls = cls_out.classification
        t1 = time.perf_counter()
        timings["classify"] = (t1 - tc) * 1000
        chosen = expert or self.router.route(cls.task, task_map)
        held += await self._yield_to_critical(critical)
        t1 = time.perf_counter()
        planner = self.planners[chosen]
        plan: PlanResponse = await (planner.plan_critical if critical else planner.plan).remote(PlanRequest(
            ticket=text, n=n, keys=ticket.alert.keys if ticket.alert is not None else []))
        t2 = time.perf_counter()
        timings["plan"] = (t2 - t1) * 1000
        timings["retrieve"] = plan.timings.retrieval_ms
        timings["cases"] = plan.timings.cases_ms
        if not plan.candidates:
            raise TicketFailed(503, f"expert {chosen} produced no usable workflow "
                                    f"({plan.dropped} samples could not be closed into a valid workflow)")
        held += await self._yield_to_critical(critical)
        t2 = time.perf_counter()
        # Candidates fan out over the Scorer replicas.
        score = self.scorer.score_critical if critical else self.scorer.score
        scored: list[ScoreResponse] = await asyncio.gather(*[
            score.remote(ScoreRequest(ticket=text, workflow=c.workflow, context=plan.scoring))
            for c in plan.candidates])
        timings["score"] = (time.perf_counter() - t2) * 1000
        # Model compute on the critical path (the rest of `total` is serving overhead and queueing).
        timings["compute"] = (cls_out.compute_ms + plan.timings.retrieval_ms + plan.timings.generation_ms
                              + max((s.compute_ms for s in scored), default=0.0))
        candidates = [Candidate(index=i, workflow=WorkflowOut.of(c.workflow), scores=s.scores, raw_tokens=c.tokens,
                                decoding=c.decoding, origin="case" if c.decoding == "case" else "model",
                                closed_early=c.closed_early)
                      for i, (c, s) in enumerate(zip(plan.candidates, scored))]
        best = candidates[best_index([c.scores for c in candidates])]
        timings["total"] = (time.perf_counter() - t0) * 1000
        if held:
            timings["held_for_critical"] = held * 1000
        return TicketResult(
            ticket_id=ticket.id,
            task=cls.task,
            confidence=round(cls.confidence, 4),
            decision_path=cls.decided_by if expert is None else f"forced:{expert}",
            expert=chosen,
            map_version=task_map.version,
            workflow=best.workflow,
            best_index=best.index,
            candidates=candidates,
            retrieved_examples=cls.examples,
            knowledge=plan.knowledge,
            similar_cases=plan.similar_cases,
            context_ids=[i.id for i in plan.knowledge.items],
            knowledge_version=plan.knowledge.version,
            timings_ms={k: round(v, 1) for k, v in timings.items()},
            n_requested=n,
            dropped_candidates=plan.dropped,
            prompt_tokens=plan.prompt_tokens,
        )

    async def _yield_to_critical(self, critical: bool) -> float:
        """Seconds a lower-severity ticket waited before a model stage for critical tickets to finish computing."""
        if critical:
            return 0.0
        return await self.flood.admission.yield_to_critical(self.cfg.flood.critical_hold_s)

    def precheck(self, ticket: Ticket, expert: str | None) -> None:
        """Refuse what cannot be served before anything is recorded or computed."""
        size = len(ticket.text())
        if size > self.cfg.serve.max_ticket_chars:
            raise TicketFailed(413, f"ticket text is {size} characters; the limit is "
                                    f"{self.cfg.serve.max_ticket_chars}")
        if expert is not None and expert not in self.planners:
            raise TicketFailed(404, f"unknown expert {expert!r}; deployed: {sorted(self.planners)}")

    async def _compute(self, ticket: Ticket, n: int, expert: str | None, task_map: TaskMap) -> TicketResult:
        return await self.solve(ticket, n, expert, task_map)

    def _checked_ticket(self, ticket: Ticket, expert: str | None) -> Ticket:
        try:
            self.precheck(ticket, expert)
        except TicketFailed as exc:
            raise HTTPException(status_code=exc.status, detail=exc.reason) from None
        ticket = ticket.model_copy(update={"id": ticket.id or uuid.uuid4().hex})
        if self.store.get(ticket.id) is not None:
            raise HTTPException(409, f"ticket id {ticket.id!r} was already submitted")
        return ticket

    async def _solve_http(self, ticket: Ticket, n: int | None, expert: str | None, cache: bool = True,
                          bounded: bool = True) -> TicketResult:
        """Admit (or refuse with Retry-After), record durably, solve or share, record the outcome."""
        ticket = self._checked_ticket(ticket, expert)
        try:
            return await self.flood.solve_sync(ticket, n, expert, use_cache=cache, bounded=bounded,
                                               principal=auth.current_principal_id())
        except Overloaded as exc:
            raise HTTPException(exc.status, detail=exc.reason, headers=exc.headers()) from None
        except AlreadySubmitted:
            raise HTTPException(409, f"ticket id {ticket.id!r} was already submitted") from None
        except Deferred as exc:
            raise _Accepted(exc.ticket_id, exc.reason, exc.retry_after_s) from None
        except TicketFailed as exc:
            raise HTTPException(status_code=exc.status, detail=exc.reason) from None

    # ---- endpoints -------------------------------------------------------------------------
    @app.post("/v1/tickets", response_model=TicketResult, summary="Solve one ticket")
    async def post_ticket(self, ticket: Ticket,
                          candidates: int | None = Query(default=None, ge=1, le=16, description="N (best-of-N)"),
                          expert: str | None = Query(default=None, max_length=100,
                                                     description="Force this expert instead of routing"),
                          mode: str = Query(default="sync", pattern="^(sync|async)$",
                                            description="async: answer 202 {ticket_id, status_url} at once and "
                                                        "compute in the background (GET the status_url)"),
                          cache: bool = Query(default=True, description="false: bypass the result cache and "
                                              "coalescing (always compute; the result is not cached)")):
        if mode == "async":
            return self._submit_async(ticket, candidates, expert, cache)
        return await self._solve_http(ticket, candidates, expert, cache)  # _Accepted -> 202 (handler above)

    def _submit_async(self, ticket: Ticket, n: int | None, expert: str | None, cache: bool) -> JSONResponse:
        ticket = self._checked_ticket(ticket, expert)
        principal = auth.current_principal_id()
        try:
            body = self.flood.submit_async(ticket, n, expert, use_cache=cache, principal=principal,
                                           webhook=self.webhooks.target_for(principal))
        except Overloaded as exc:
            raise HTTPException(exc.status, detail=exc.reason, headers=exc.headers()) from None
        except AlreadySubmitted:
            raise HTTPException(409, f"ticket id {ticket.id!r} was already submitted") from None
        return JSONResponse(status_code=202, content=body, headers={"Location": body["status_url"]})

    @app.post("/v1/alerts/alertmanager", response_model=AlertmanagerReceipt,
              summary="Alertmanager webhook: a ticket per firing alert, resolved alerts close theirs",
              description="Idempotent per alert firing, one computation per incident (alert group and name); "
                          "503 + Retry-After when the backlog refused some (Alertmanager retries). "
                          "Details: deployments/alertmanager.py.")
    async def post_alertmanager(self, payload: AlertmanagerPayload,
                                candidates: int | None = Query(default=None, ge=1, le=16,
                                                               description="N (best-of-N) of the tickets"),
                                on_resolved: str = Query(default="cancel", pattern="^(cancel|annotate)$",
                                                         description="cancel: a still queued ticket whose alert "
                                                                     "resolved is not computed; annotate: it is")):
        principal = auth.current_principal_id()
        return self.alerts.receive(payload, candidates, on_resolved, principal=principal,
                                   webhook=self.webhooks.target_for(principal))

    @app.get("/v1/stats", summary="Flood dashboard numbers of this ingress replica (JSON)")
    async def stats(self) -> dict[str, Any]:
        """Rolling-window summary for the console (window `window_s`, default 60 s; per ingress replica,
        except `store`, which counts the shared durable store). Shape (values null when no data):

            {"replica": str, "uptime_s": float, "window_s": float,
             "tickets_per_s": float,                       # finished tickets/s in the window
             "latency_ms": {"p50", "p95", "p99", "count"},  # all finished tickets (computed + shared)
             "computed_latency_ms": {"p50", "p95", "p99", "count"},  # computed ones only
             "stage_ms": {"classify"|"plan"|"score": {"p50", "p95", "p99", "count"}},
             "unknown_rate": float,                        # share classified `unknown`
             "shared": {"coalesced": float, "cache": float},  # shares of finished tickets
             "errors": int,                                # failed tickets in the window
             "rejects": {"total": int, "per_s": float, "by_status": {"429": int, "503": int},
                         "by_reason": {"queue_full"|"wait_timeout"|"backlog_full": int}},
             "totals": {"done", "failed", "rejected", "coalesced", "cache", "unknown", "retries"},  # since start
             "queue": {"inflight", "waiting", "max_inflight", "max_waiting", "throughput_per_s",
                       "retry_after_s", "rejected", "flights", "async_queued", "async_running", "worker"},
             "cache": {"entries", "max_entries", "ttl_s", "hits", "misses", "evictions", "expirations",
                       "enabled", "model_version"},
             "store": {"queued"|"running"|"done"|"failed": int},
             "webhooks": {"enabled", "delivered", "retrying", "pending", "failed", "attempts", "retries",
                          "last_error": {"ticket_id", "receiver", "error", "http_status", "at", ...} | null,
                          "replica": {"ok", "retried", "failed", "sending", "running"}}}  # counts: shared store
        """
        return {**self.flood.stats(), "webhooks": self.webhooks.stats()}

    async def check_health(self) -> None:
        self.flood.worker.ensure_started()  # (re)start the durable worker if its loop is not running
        self.webhooks.ensure_started()  # and the webhook sender (deliveries left pending by a restart)
        kb_admin.ensure_started()  # and the periodic consolidation, when configured

    @app.post("/v1/tickets/batch", response_model=BatchResult, summary="Solve several tickets")
    async def post_batch(self, body: BatchRequest,
                         candidates: int | None = Query(default=None, ge=1, le=16)):
        if len(body.tickets) > self.cfg.serve.max_batch_tickets:
            raise HTTPException(413, f"{len(body.tickets)} tickets in one batch; the limit is "
                                     f"{self.cfg.serve.max_batch_tickets}")
        if not self.flood.admission.has_room(len(body.tickets)):
            self.flood.metrics.observe_reject(429, "queue_full")
            retry = self.flood.admission.retry_after()
            raise HTTPException(429, f"over capacity for a batch of {len(body.tickets)}; retry later",
                                headers={"Retry-After": str(retry)})
        results = await asyncio.gather(*[self._solve_http(t, candidates, None, bounded=False)
                                         for t in body.tickets])
        return BatchResult(results=list(results))

    @app.get("/v1/tickets/{ticket_id}", summary="Status and result of a submitted ticket")
    async def get_ticket(self, ticket_id: str) -> dict[str, Any]:
        row = self.store.get(ticket_id)
        if row is None:
            raise HTTPException(404, f"no ticket {ticket_id!r}")
        return {"ticket_id": row["id"], "status": row["status"], "result": row.get("result"),
                "error": row.get("error"), "attempts": row["attempts"], **ticket_fields(row)}

    @app.post("/v1/tickets/{ticket_id}/feedback", status_code=201,
              summary="An operator accepts, rejects or corrects a returned workflow",
              description="verdict accept | reject | edit; an edit carries the corrected workflow (steps or "
                          "mermaid). Accepted and edited tickets become cases that similar tickets are grounded "
                          "in (similar_cases in the answer); training reads every verdict. Bad feedback is "
                          "refused with a reason and nothing is stored.")
    async def post_feedback(self, ticket_id: str, body: Feedback) -> dict[str, Any]:
        row = self.store.get(ticket_id)
        if row is None:
            raise HTTPException(404, f"no ticket {ticket_id!r}")
        if row["status"] != DONE:
            raise HTTPException(409, f"ticket {ticket_id!r} has no result yet (status {row['status']})")
        result = row["result"]
        n = len(result["candidates"])
        candidate = result["best_index"] if body.candidate is None else body.candidate
        if candidate >= n:
            raise HTTPException(422, f"candidate {candidate} does not exist (ticket has {n})")
        judged = Workflow.model_validate({"steps": result["candidates"][candidate]["workflow"]["steps"]})
        try:
            final = corrected_workflow(body) if body.verdict == "edit" else judged
            resolved_by = body.outcome.step_id(final) if body.outcome is not None else None
        except WorkflowError as exc:
            raise HTTPException(422, f"feedback refused: {exc}") from None
        outcome = {"status": body.outcome.status, "step": resolved_by} if body.outcome is not None else None
        principal = auth.current_principal_id()
        fid = self.store.add_feedback(ticket_id, body.verdict, candidate, body.comment, principal=principal,
                                      workflow={"steps": [s.model_dump(mode="json") for s in final.steps]}
                                      if body.verdict == "edit" else None, outcome=outcome)
        case = self._record_case(ticket_id, row, body.verdict, final, judged, body.comment, outcome, principal, fid)
        out: dict[str, Any] = {"feedback_id": fid, "ticket_id": ticket_id, "verdict": body.verdict,
                               "candidate": candidate, "case": case}
        if body.verdict == "edit":
            out["workflow"] = WorkflowOut.of(final).model_dump(mode="json")
        if outcome is not None:
            out["outcome"] = outcome
        return out

    def _record_case(self, ticket_id: str, row: dict, verdict: str, final: Workflow, judged: Workflow,
                     comment: str | None, outcome: dict | None, principal: str | None, fid: int) -> str | None:
        """Accepted and edited tickets become cases (the latest verdict wins: a reject forgets the case)."""
        if self.cases is None:
            return None
        if verdict == "reject":
            self.cases.remove(ticket_id)
            return None
        result = row["result"]
        case = Case(ticket_id=ticket_id, text=Ticket.model_validate(row["request"]).text(), verdict=verdict,
                    workflow=final, original=judged if verdict == "edit" else None,
                    knowledge=[KnowledgeItem.model_validate(i) for i in result.get("knowledge", {}).get("items", [])],
                    expert=result.get("expert"), comment=comment, outcome=outcome, principal=principal,
                    feedback_id=fid)
        self.cases.put(case)
        return case.id

    @app.get("/v1/map", summary="The live task->expert map and its history")
    async def get_map(self) -> dict[str, Any]:
        current = await self.current_map()
        return {"current": current.model_dump(), "history": await self.registry.history.remote(),
                "tasks": self.tasks, "experts": self.experts}

    @app.post("/v1/map", summary="Publish a new map (validated; in-flight requests keep the old one)")
    async def publish_map(self, task_map: TaskMap) -> dict[str, Any]:
        try:
            published = await self.registry.publish.remote(task_map.model_dump())
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if hasattr(exc, "cause") else exc
            if isinstance(cause, (MapError, ValueError)):
                raise HTTPException(409, str(cause)) from None
            raise
        self._checked = 0.0
        return {"published": published["version"], "map": published}

    @app.post("/v1/map/rollback", summary="Return to the previously published map")
    async def rollback_map(self) -> dict[str, Any]:
        try:
            restored = await self.registry.rollback.remote()
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if hasattr(exc, "cause") else exc
            if isinstance(cause, MapError):
                raise HTTPException(409, str(cause)) from None
            raise
        self._checked = 0.0
        return {"restored": restored["version"], "map": restored}

    @app.get("/metrics", include_in_schema=False)
    async def metrics(self):
        """Prometheus text exposition of the whole service (access: auth.metrics_access)."""
        return await self.prometheus.response()

    @app.get("/healthz", summary="Liveness and what is deployed")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "map_version": (await self.current_map()).version, "experts": self.experts,
                "tasks": self.tasks}

    @app.get("/v1/models", summary="OpenAI-compatible model list: the auto model and every expert",
             response_model=openai_api.ModelList)
    async def models(self) -> openai_api.ModelList:
        return openai_api.model_list(self.cfg, self.experts, await self.current_map(), self.tasks)

    @app.get("/v1/models/{model_id}", summary="OpenAI-compatible: one model of the list",
             response_model=openai_api.ModelCard,
             responses={404: {"model": openai_api.OpenAIErrorResponse,
                              "description": "Unknown model (code model_not_found)."}})
    async def model(self, model_id: str):
        listing = openai_api.model_list(self.cfg, self.experts, await self.current_map(), self.tasks)
        for card in listing.data:
            if card.id == model_id:
                return card
        return openai_api.model_not_found(model_id, list(self.planners)).response()

    @app.post("/v1/chat/completions", summary="OpenAI-compatible: the last user message is the ticket",
              description="Behaviour of each parameter, streaming and errors: deployments/openai_api.py.",
              response_model=None, responses=openai_api.CHAT_RESPONSES)
    async def chat(self, body: openai_api.ChatRequest):
        try:
            expert = openai_api.check_request(body, self.cfg, list(self.planners))
            ticket = openai_api.ticket_of(body, uuid.uuid4().hex)
            try:
                self.precheck(ticket, expert)
            except TicketFailed as exc:
                raise openai_api.OpenAIError(exc.status, exc.reason) from None

            async def solve() -> TicketResult:
                try:
                    return await self._solve_http(ticket, body.n, expert)
                except _Accepted as exc:
                    if not body.stream:
                        raise  # 202 with the status URL, as for /v1/tickets
                    raise openai_api.deferred(exc.ticket_id, exc.reason) from None
                except HTTPException as exc:
                    raise openai_api.OpenAIError.of_http(exc) from None

            if not body.stream:
                return openai_api.completion(await solve(), body.n)
            openai_api.check_room(self.flood)
            usage = body.stream_options is not None and body.stream_options.include_usage
            return openai_api.streaming_response(openai_api.ChunkBuilder(ticket.id, body.model, usage), solve(),
                                                 body.n)
        except openai_api.OpenAIError as exc:
            return exc.response()
