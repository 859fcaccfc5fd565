"""Serve deployment of stage 4: the five-dimension Scorer, replicated so best-of-N fans out."""

from __future__ import annotations

import asyncio
import time

from ray import serve

from core.config import ScorerConfig
from core.schemas import ScoreRequest, ScoreResponse
from experts.engines.registry import build_engine
from experts.scorer import Scorer


@serve.deployment
class ScorerDeployment:
    def __init__(self, config: dict):
        cfg = ScorerConfig.model_validate(config)
        self.scorer = Scorer(build_engine(cfg.model), cfg.dimensions, cfg.structure_weight, cfg.grounding_weight)
        self.score.set_max_batch_size(cfg.model.max_batch_size)
        self.score.set_batch_wait_timeout_s(cfg.model.batch_wait_timeout_s)

    @serve.batch
    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResponse]:
        requests = [ScoreRequest.model_validate(r) for r in requests]
        t0 = time.perf_counter()
        scores = await asyncio.to_thread(self.scorer.score, [(r.ticket, r.workflow, r.context) for r in requests])
        compute_ms = (time.perf_counter() - t0) * 1000  # the batch's wall time: what each caller waited
        return [ScoreResponse(scores=s, compute_ms=compute_ms, batch_size=len(requests)) for s in scores]
