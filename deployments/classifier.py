"""Serve deployment of stage 1 (task classifier).

The classifier LLM's LoRA adapter is the deployment's `user_config` (`{"adapter": folder or None}`, set by
deployments/app.py from `classifier.model.adapter`), so publishing a trained adapter is a Serve
lightweight update: `reconfigure` loads the adapter into the running replica (a new engine and
classifier are built beside the serving ones and swapped in one assignment; a batch in flight finishes
on the one it started with) and no replica restarts. The adapter is left out of the deployment's
version for that reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

from ray import serve

from core.config import FlowRouterConfig
from core.embeddings import get_embedder
from core.schemas import ClassifyRequest, ClassifyResponse
from experts.engines.registry import build_engine
from router.classifier import TaskClassifier
from router.examples import ExampleIndex, load_examples, load_tasks

log = logging.getLogger(__name__)


@serve.deployment
class ClassifierDeployment:
    def __init__(self, config: dict):
        cfg = FlowRouterConfig.model_validate(config)
        c = cfg.classifier
        self.cfg = c
        self.task_infos = load_tasks(cfg.tasks.tasks)
        self.index = ExampleIndex(load_examples(cfg.tasks.examples), get_embedder(c.embedder), c.lexical_weight)
        self.classifier = TaskClassifier(c, self.task_infos, self.index, build_engine(c.model))
        self.adapter = c.model.adapter
        self.loaded_at = time.time()
        self._swap = threading.Lock()
        self.classify.set_max_batch_size(c.model.max_batch_size)
        self.classify.set_batch_wait_timeout_s(c.model.batch_wait_timeout_s)

    def reconfigure(self, user_config: dict) -> None:
        """Serve the classifier LLM with `user_config["adapter"]` (None: the base weights), without a restart."""
        adapter = (user_config or {}).get("adapter")
        with self._swap:
            if adapter == self.adapter:
                return
            t0 = time.perf_counter()
            spec = self.cfg.model.model_copy(update={"adapter": adapter})
            cfg = self.cfg.model_copy(update={"model": spec})
            # Built beside the serving classifier, then swapped: requests never see a half-loaded model.
            classifier = TaskClassifier(cfg, self.task_infos, self.index, build_engine(spec))
            self.classifier, self.cfg, self.adapter, self.loaded_at = classifier, cfg, adapter, time.time()
            log.info("classifier LLM now serves adapter %s (loaded in %.1fs)", adapter or "none (base weights)",
                     time.perf_counter() - t0)

    @serve.batch
    async def classify(self, requests: list[ClassifyRequest]) -> list[ClassifyResponse]:
        texts = [ClassifyRequest.model_validate(r).text for r in requests]
        classifier = self.classifier  # one classifier for the whole batch, even if an adapter is swapped in
        # Model work runs off the event loop so health checks and queueing stay responsive.
        t0 = time.perf_counter()
        results = await asyncio.to_thread(classifier.classify, texts)
        compute_ms = (time.perf_counter() - t0) * 1000  # the batch's wall time: what each caller waited
        return [ClassifyResponse(classification=r, compute_ms=compute_ms, batch_size=len(texts)) for r in results]

    def tasks(self) -> list[str]:
        return list(self.classifier.names)

    def info(self) -> dict:
        """What this replica's classifier LLM serves: model, adapter, fingerprint, when it was loaded, and the
        replica's process id (unchanged by a new adapter: the replica is reconfigured, not restarted)."""
        spec = self.cfg.model
        return {"model": spec.name, "base": spec.base, "adapter": self.adapter, "fingerprint": spec.fingerprint(),
                "loaded_at": self.loaded_at, "pid": os.getpid()}
