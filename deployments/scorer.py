"""Serve deployment of stage 4: the five-dimension Scorer, replicated so best-of-N fans out."""

from __future__ import annotations

import asyncio
import time

from ray import serve

from core.config import ScorerConfig
from core.schemas import ScoreRequest, ScoreResponse
from deployments.priority import PriorityGate
from experts.engines.registry import build_engine
from experts.scorer import Scorer


@serve.deployment
class ScorerDeployment:
    def __init__(self, config: dict):
        cfg = ScorerConfig.model_validate(config)
        self.scorer = Scorer(build_engine(cfg.model), cfg.dimensions, cfg.structure_weight, cfg.grounding_weight)
        self.gate = PriorityGate()
        for method in (self.score, self.score_critical):
            method.set_max_batch_size(cfg.model.max_batch_size)
            method.set_batch_wait_timeout_s(cfg.model.batch_wait_timeout_s)

    @serve.batch
    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResponse]:
        return await self._score(requests, critical=False)

    @serve.batch
    async def score_critical(self, requests: list[ScoreRequest]) -> list[ScoreResponse]:
        """`score` for critical tickets: a queue of their own, and the model next when it frees."""
        return await self._score(requests, critical=True)

    async def _score(self, requests: list[ScoreRequest], critical: bool) -> list[ScoreResponse]:
        requests = [ScoreRequest.model_validate(r) for r in requests]
        t0 = time.perf_counter()
        scores = await asyncio.to_thread(self._score_gated, [(r.ticket, r.workflow, r.context) for r in requests],
                                         critical)
        compute_ms = (time.perf_counter() - t0) * 1000  # the batch's wall time: what each caller waited
        return [ScoreResponse(scores=s, compute_ms=compute_ms, batch_size=len(requests)) for s in scores]

    def _score_gated(self, items: list, critical: bool) -> list:
        with self.gate.hold(critical):
            return self.scorer.score(items)
