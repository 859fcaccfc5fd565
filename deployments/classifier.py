"""Serve deployment of stage 1 (task classifier)."""

from __future__ import annotations

import asyncio
import time

from ray import serve

from core.config import FlowRouterConfig
from core.embeddings import get_embedder
from core.schemas import ClassifyRequest, ClassifyResponse
from experts.engines.registry import build_engine
from router.classifier import TaskClassifier
from router.examples import ExampleIndex, load_examples, load_tasks


@serve.deployment
class ClassifierDeployment:
    def __init__(self, config: dict):
        cfg = FlowRouterConfig.model_validate(config)
        c = cfg.classifier
        index = ExampleIndex(load_examples(cfg.tasks.examples), get_embedder(c.embedder), c.lexical_weight)
        self.classifier = TaskClassifier(c, load_tasks(cfg.tasks.tasks), index, build_engine(c.model))
        self.classify.set_max_batch_size(c.model.max_batch_size)
        self.classify.set_batch_wait_timeout_s(c.model.batch_wait_timeout_s)

    @serve.batch
    async def classify(self, requests: list[ClassifyRequest]) -> list[ClassifyResponse]:
        texts = [ClassifyRequest.model_validate(r).text for r in requests]
        # Model work runs off the event loop so health checks and queueing stay responsive.
        t0 = time.perf_counter()
        results = await asyncio.to_thread(self.classifier.classify, texts)
        compute_ms = (time.perf_counter() - t0) * 1000  # the batch's wall time: what each caller waited
        return [ClassifyResponse(classification=r, compute_ms=compute_ms, batch_size=len(texts)) for r in results]

    def tasks(self) -> list[str]:
        return list(self.classifier.names)
