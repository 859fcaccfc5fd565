"""Serve deployment of stage 3: one deployment per Planner expert."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from ray import serve

from core.config import CaseMemoryConfig, ModelSpec, PlannerConfig
from core.embeddings import shared_embedder
from core.schemas import PlanRequest, PlanResponse, PlanTimings
from deployments.priority import PriorityGate
from experts.engines.registry import build_engine
from experts.knowledge.cases import CaseIndex, CaseStore
from experts.knowledge.retrieve import KnowledgeBase
from experts.planner import Planner

log = logging.getLogger(__name__)


def open_knowledge(directory: str | None):
    if not directory or not Path(directory).exists():
        return None
    return KnowledgeBase.open(directory)


def open_cases(cfg: CaseMemoryConfig, directory: str | None, kb) -> CaseIndex | None:
    """The case index over the shared store (created empty when absent), embedding with the base's embedder."""
    if not cfg.enabled or not directory:
        return None
    embedder = kb.embedder if kb is not None else shared_embedder()
    return CaseIndex(CaseStore(directory), lambda texts: embedder.encode(texts, role="passage"),
                     lexical_weight=cfg.lexical_weight, edit_bonus=cfg.edit_bonus)


@serve.deployment
class PlannerDeployment:
    def __init__(self, spec: dict, planner: dict, knowledge_dir: str | None, min_relevance: float = 0.0,
                 cases: dict | None = None, cases_dir: str | None = None):
        self.spec = ModelSpec.model_validate(spec)
        self.kb = open_knowledge(knowledge_dir)
        case_cfg = CaseMemoryConfig.model_validate(cases or {"enabled": False})
        self.planner = Planner(self.spec, build_engine(self.spec), PlannerConfig.model_validate(planner), self.kb,
                               min_relevance=min_relevance, cases=open_cases(case_cfg, cases_dir, self.kb),
                               case_cfg=case_cfg)
        # The first ticket must not pay for compiling the workflow grammar (seconds on a large vocabulary).
        grammars = getattr(self.planner.engine, "grammars", None)
        if grammars is not None:
            grammars.compile(self.planner.grammar)
        self.gate = PriorityGate()
        for method in (self.plan, self.plan_critical):
            method.set_max_batch_size(self.spec.max_batch_size)
            method.set_batch_wait_timeout_s(self.spec.batch_wait_timeout_s)

    @serve.batch
    async def plan(self, requests: list[PlanRequest]) -> list[PlanResponse]:
        return await asyncio.to_thread(self._plan_gated, [PlanRequest.model_validate(r) for r in requests], False)

    @serve.batch
    async def plan_critical(self, requests: list[PlanRequest]) -> list[PlanResponse]:
        """`plan` for critical tickets: a queue of their own, and the model next when it frees."""
        return await asyncio.to_thread(self._plan_gated, [PlanRequest.model_validate(r) for r in requests], True)

    def _plan_gated(self, requests: list[PlanRequest], critical: bool) -> list[PlanResponse]:
        with self.gate.hold(critical):
            return self._plan(requests)

    def _plan(self, requests: list[PlanRequest]) -> list[PlanResponse]:
        if self.kb is not None and self.kb.reload_if_changed():
            log.info("knowledge base now at version %s", self.kb.version)
        t0 = time.perf_counter()
        contexts = [self.planner.context_for(r.ticket, tuple(r.exclude_sources), tuple(r.keys)) for r in requests]
        tc = time.perf_counter()
        groundings = self.planner.cases_for(requests, contexts)  # refresh (one read) + search
        t1 = time.perf_counter()
        plans = self.planner.plan(requests, contexts=contexts, groundings=groundings)
        timings = PlanTimings(retrieval_ms=(t1 - t0) * 1000, generation_ms=(time.perf_counter() - t1) * 1000,
                              batch_size=len(requests), cases_ms=(t1 - tc) * 1000)
        return [PlanResponse(candidates=p.candidates, dropped=p.dropped, knowledge=p.knowledge,
                             scoring=p.scoring, similar_cases=p.similar_cases, timings=timings,
                             prompt_tokens=p.prompt_tokens) for p in plans]

    def info(self) -> dict:
        cases = self.planner.cases
        return {"expert": self.spec.name, "fingerprint": self.spec.fingerprint(),
                "knowledge_version": getattr(self.kb, "version", None),
                "cases_revision": cases.revision if cases is not None else None}
