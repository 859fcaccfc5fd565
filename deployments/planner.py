"""Serve deployment of stage 3: one deployment per Planner expert."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from ray import serve

from core.config import FlowRouterConfig, ModelSpec, PlannerConfig
from experts.engines.registry import build_engine
from experts.planner import Planner

log = logging.getLogger(__name__)


def open_knowledge(directory: str | None):
    if not directory or not Path(directory).exists():
        return None
    from experts.knowledge.retrieve import KnowledgeBase

    return KnowledgeBase.open(directory)


@serve.deployment
class PlannerDeployment:
    def __init__(self, spec: dict, planner: dict, knowledge_dir: str | None):
        self.spec = ModelSpec.model_validate(spec)
        self.kb = open_knowledge(knowledge_dir)
        self.planner = Planner(self.spec, build_engine(self.spec), PlannerConfig.model_validate(planner), self.kb)
        self.plan.set_max_batch_size(self.spec.max_batch_size)
        self.plan.set_batch_wait_timeout_s(self.spec.batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def plan(self, requests: list[dict]) -> list[dict]:
        return await asyncio.to_thread(self._plan, requests)

    def _plan(self, requests: list[dict]) -> list[dict]:
        if self.kb is not None and self.kb.reload_if_changed():
            log.info("knowledge base now at version %s", self.kb.version)
        out: list[dict | None] = [None] * len(requests)
        # One generate call per distinct N (a batch may mix best-of-1 and best-of-4 requests).
        by_n: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            by_n.setdefault((r.get("n"), r.get("seed")), []).append(i)
        for (n, seed), idx in by_n.items():
            t0 = time.perf_counter()
            tickets = [requests[i]["ticket"] for i in idx]
            contexts = [self.planner.context_for(t) for t in tickets]
            t1 = time.perf_counter()
            plans = self.planner.plan(tickets, n=n, seed=seed, contexts=contexts)
            t2 = time.perf_counter()
            for i, p in zip(idx, plans):
                out[i] = {
                    "candidates": [
                        {"workflow": c.workflow.model_dump(mode="json"), "origin": c.origin, "tokens": c.tokens,
                         "raw": c.raw}
                        for c in p.candidates
                    ],
                    "dropped": p.dropped,
                    "context_ids": p.context_ids,
                    "knowledge_version": getattr(self.kb, "version", None),
                    "timings_ms": {"retrieval": (t1 - t0) * 1000, "generation": (t2 - t1) * 1000,
                                   "batch_size": len(idx)},
                }
        return out  # type: ignore[return-value]

    def info(self) -> dict:
        return {"expert": self.spec.name, "fingerprint": self.spec.fingerprint(),
                "knowledge_version": getattr(self.kb, "version", None)}
