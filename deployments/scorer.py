"""Serve deployment of stage 4: the five-dimension Scorer, replicated so best-of-N fans out."""

from __future__ import annotations

import asyncio
import time

from ray import serve

from core.config import ScorerConfig
from core.workflow import Workflow
from experts.engines.registry import build_engine
from experts.scorer import Scorer


@serve.deployment
class ScorerDeployment:
    def __init__(self, config: dict):
        cfg = ScorerConfig.model_validate(config)
        self.scorer = Scorer(build_engine(cfg.model), cfg.dimensions)
        self.score.set_max_batch_size(cfg.model.max_batch_size)
        self.score.set_batch_wait_timeout_s(cfg.model.batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def score(self, items: list[dict]) -> list[dict]:
        pairs = [(it["ticket"], Workflow.model_validate(it["workflow"])) for it in items]
        t0 = time.perf_counter()
        scores = await asyncio.to_thread(self.scorer.score, pairs)
        compute_ms = (time.perf_counter() - t0) * 1000  # the batch's wall time: what each caller waited
        return [s.model_dump() | {"compute_ms": compute_ms, "batch_size": len(items)} for s in scores]
