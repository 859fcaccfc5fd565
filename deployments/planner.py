"""Serve deployment of stage 3: one deployment per Planner expert."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from ray import serve

from core.config import ModelSpec, PlannerConfig
from core.schemas import PlanRequest, PlanResponse, PlanTimings
from experts.engines.registry import build_engine
from experts.knowledge.retrieve import KnowledgeBase
from experts.planner import Planner

log = logging.getLogger(__name__)


def open_knowledge(directory: str | None):
    if not directory or not Path(directory).exists():
        return None
    return KnowledgeBase.open(directory)


@serve.deployment
class PlannerDeployment:
    def __init__(self, spec: dict, planner: dict, knowledge_dir: str | None, min_relevance: float = 0.0):
        self.spec = ModelSpec.model_validate(spec)
        self.kb = open_knowledge(knowledge_dir)
        self.planner = Planner(self.spec, build_engine(self.spec), PlannerConfig.model_validate(planner), self.kb,
                               min_relevance=min_relevance)
        # The first ticket must not pay for compiling the workflow grammar (seconds on a large vocabulary).
        grammars = getattr(self.planner.engine, "grammars", None)
        if grammars is not None:
            grammars.compile(self.planner.grammar)
        self.plan.set_max_batch_size(self.spec.max_batch_size)
        self.plan.set_batch_wait_timeout_s(self.spec.batch_wait_timeout_s)

    @serve.batch
    async def plan(self, requests: list[PlanRequest]) -> list[PlanResponse]:
        return await asyncio.to_thread(self._plan, [PlanRequest.model_validate(r) for r in requests])

    def _plan(self, requests: list[PlanRequest]) -> list[PlanResponse]:
        if self.kb is not None and self.kb.reload_if_changed():
            log.info("knowledge base now at version %s", self.kb.version)
        t0 = time.perf_counter()
        contexts = [self.planner.context_for(r.ticket, tuple(r.exclude_sources), tuple(r.keys)) for r in requests]
        t1 = time.perf_counter()
        plans = self.planner.plan(requests, contexts=contexts)
        timings = PlanTimings(retrieval_ms=(t1 - t0) * 1000, generation_ms=(time.perf_counter() - t1) * 1000,
                              batch_size=len(requests))
        return [PlanResponse(candidates=p.candidates, dropped=p.dropped, knowledge=p.knowledge,
                             scoring=p.scoring, timings=timings, prompt_tokens=p.prompt_tokens) for p in plans]

    def info(self) -> dict:
        return {"expert": self.spec.name, "fingerprint": self.spec.fingerprint(),
                "knowledge_version": getattr(self.kb, "version", None)}
