"""Stage 1: the task classifier (CoE-Ops Prompt 3 with retrieval), with a retrieval-only cascade.

Retrieval gives a similarity-weighted vote over labeled neighbours, mixed with supervised models
trained on the labeled examples: with `fusion: learned`, the MiniLM+n-gram logistic head
(router/head.py) and a calibrated word+char TF-IDF LinearSVC (router/lexical.py), with weights learned
out of fold and saved as a versioned artefact (router/fusion.py); with `fusion: manual`, the head
alone by `head_weight`. That is the retrieval-side distribution. The LLM sees the task list plus the
retrieved examples with their labels and yields a distribution over task names. When the retrieval
side is confident the LLM is skipped (the cascade): by the `min_agreement`/`min_similarity`
thresholds, or by the learned gate (`cascade.gate: learned`), which asks the LLM only below the
confidence where it helped on dev. The reply says which path decided (`decided_by`).

Modes (`classify(texts, mode=...)`; the service uses the default, `cascade` unless disabled):
- `retrieval`: the retrieval-side distribution alone, never the LLM;
- `llm`: the LLM alone, prompted with the task list and no examples;
- `llm+retrieval`: always the LLM with examples, combined with retrieval by `llm_weight`;
- `cascade`: `retrieval` when it is confident, else `llm+retrieval`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.config import ClassifierConfig
from core.schemas import UNKNOWN, Classification
from experts.engines.base import Engine
from router.examples import ExampleIndex, Neighbour, TaskInfo
from router.fusion import load_or_fit, load_or_fit_gate, vote_row
from router.head import LinearHead

SYSTEM = "You classify IT operations tickets into exactly one task. Answer with the task name only."

DECIDED_RETRIEVAL = "retrieval"
DECIDED_LLM = "llm+retrieval"
DECIDED_LLM_ONLY = "llm"
MODES = ("retrieval", "llm", "llm+retrieval", "cascade")
DECIDED_OOD = "out-of-domain"
DECIDED_LOW = "low-confidence"


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


class TaskClassifier:
    def __init__(self, cfg: ClassifierConfig, tasks: list[TaskInfo], index: ExampleIndex, llm: Engine | None):
        if not tasks:
            raise ValueError("the classifier needs at least one task")
        self.cfg = cfg
        self.tasks = tasks
        self.names = [t.name for t in tasks]
        unknown = {e.task for e in index.examples} - set(self.names)
        if unknown:
            raise ValueError(f"labeled examples use tasks that are not in the task set: {sorted(unknown)}")
        self.index = index
        self.llm = llm
        # Label continuations the LLM is scored on; the leading space matches how BPE splits words.
        self.labels = [" " + n for n in self.names]
        self.head = None
        self.fusion = None  # router.fusion.FittedFusion (fusion: learned)
        self.artefact: Path | None = None
        self.gate: dict | None = None  # the learned gate (cascade.gate: learned, with an LLM)
        if cfg.fusion == "learned":
            self.fusion, self.artefact = load_or_fit(index, self.names, cfg)
            if cfg.cascade.gate == "learned" and llm is not None:
                self.gate = load_or_fit_gate(self.fusion, self.artefact, index, cfg, llm, cfg.model.fingerprint(),
                                             self.prompt, self.labels)
        elif cfg.head_weight > 0:
            self.head = LinearHead([e.text for e in index.examples], [e.task for e in index.examples], self.names,
                                   index.vectors, index.lexical, c=cfg.head_c)

    # ---- pieces ----------------------------------------------------------------------------
    def vote(self, neighbours: list[Neighbour]) -> dict[str, float]:
        """Softmax over neighbour similarities, summed per task."""
        return dict(zip(self.names, map(float, vote_row(neighbours, self.names, self.cfg.vote_temperature))))

    def prompt(self, text: str, neighbours: list[Neighbour]) -> str:
        task_lines = "\n".join(f"- {t.name}: {_shorten(t.description, 90)}" if t.description else f"- {t.name}"
                               for t in self.tasks)
        shots = neighbours[: self.cfg.prompt_examples]
        # Most similar example last, nearest to the question (small models copy the recent label).
        examples = "\n\n".join(f"Ticket: {_shorten(n.text, 160)}\nTask: {n.task}" for n in reversed(shots))
        similar = f"Labeled tickets similar to the new one:\n\n{examples}\n\n" if shots else ""
        user = (f"Tasks:\n{task_lines}\n\n{similar}"
                f"Classify the new ticket into one of the tasks.\n\nTicket: {_shorten(text, 400)}")
        assert self.llm is not None
        return self.llm.format_prompt(SYSTEM, user, assistant_prefix="Task:")

    # ---- the stage -------------------------------------------------------------------------
    def retrieve(self, texts: list[str]) -> tuple[list[list[Neighbour]], list[dict[str, float]]]:
        """Neighbours and the retrieval-side distribution: the learned fusion of vote, head and lexical SVC
        (`fusion: learned`), else the vote mixed with the head by `head_weight`."""
        q = self.index.encode(texts)
        neighbours = self.index.search(texts, self.cfg.top_k, q=q)
        if self.fusion is not None:
            votes = np.stack([vote_row(n, self.names, self.cfg.vote_temperature) for n in neighbours]) if texts \
                else np.zeros((0, len(self.names)))
            fused = self.fusion.fuse(self.fusion.component_probs(texts, q, votes))
            return neighbours, [dict(zip(self.names, map(float, row))) for row in fused]
        dists = [self.vote(n) for n in neighbours]
        if self.head is not None:
            w = self.cfg.head_weight
            head = self.head.probs(texts, q)
            dists = [{t: (1 - w) * v[t] + w * h[t] for t in self.names} for v, h in zip(dists, head)]
        return neighbours, dists

    def classify(self, texts: list[str], mode: str | None = None) -> list[Classification]:
        """One Classification per text; `mode` (see MODES) defaults to the config: cascade when enabled,
        else llm+retrieval. Without an LLM every mode decides by retrieval."""
        if mode is None:
            mode = "cascade" if self.cfg.cascade.enabled else "llm+retrieval"
        if mode not in MODES:
            raise ValueError(f"unknown classifier mode {mode!r}; use one of {MODES}")
        if self.llm is None:
            mode = "retrieval"
        neighbours, votes = self.retrieve(texts)
        results: list[Classification | None] = [None] * len(texts)
        need_llm: list[int] = []
        for i, (nb, vote) in enumerate(zip(neighbours, votes)):
            examples = [n.brief() for n in nb]
            best = max(vote, key=vote.get)
            nearest = nb[0].similarity if nb else -1.0
            if nearest < self.cfg.min_neighbour_similarity:
                results[i] = Classification(task=UNKNOWN, confidence=1 - vote[best], decided_by=DECIDED_OOD,
                                            distribution=vote, examples=examples)
            elif mode == "retrieval" or (mode == "cascade" and self._confident(vote[best], nearest)):
                results[i] = self._decide(vote, DECIDED_RETRIEVAL, examples)
            else:
                need_llm.append(i)
        if need_llm:
            only = mode == "llm"
            prompts = [self.prompt(texts[i], [] if only else neighbours[i]) for i in need_llm]
            dists = self.llm.label_probs(prompts, self.labels)
            w = 1.0 if only else self.llm_weight
            for i, dist in zip(need_llm, dists):
                llm = {n: dist[" " + n] for n in self.names}
                combined = {t: w * llm[t] + (1 - w) * votes[i][t] for t in self.names}
                results[i] = self._decide(combined, DECIDED_LLM_ONLY if only else DECIDED_LLM,
                                          [n.brief() for n in neighbours[i]])
        return results  # type: ignore[return-value]

    @property
    def llm_weight(self) -> float:
        """Weight of the LLM against retrieval: the learned gate's when it has one, else the config's."""
        if self.gate is not None and self.gate.get("llm_weight") is not None:
            return float(self.gate["llm_weight"])
        return self.cfg.llm_weight

    def _confident(self, top: float, nearest: float) -> bool:
        """The cascade lets retrieval decide alone (does not ask the LLM)."""
        if self.cfg.cascade.gate == "learned" and self.gate is not None:
            return top >= self.gate["threshold"]  # a shut gate has threshold 0: never asks
        return top >= self.cfg.cascade.min_agreement and nearest >= self.cfg.cascade.min_similarity

    def _decide(self, dist: dict[str, float], path: str, examples: list[dict]) -> Classification:
        best = max(self.names, key=lambda t: (dist[t], -self.names.index(t)))
        if dist[best] < self.cfg.unknown_threshold:
            return Classification(task=UNKNOWN, confidence=1 - dist[best], decided_by=f"{path}/{DECIDED_LOW}",
                                  distribution=dist, examples=examples)
        return Classification(task=best, confidence=dist[best], decided_by=path, distribution=dist,
                              examples=examples)
