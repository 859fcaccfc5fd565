"""STEPScore (FlowXpert): step-level semantic precision, recall and F1 between two workflows.

Both workflows become step sets. With cos(g, r) the cosine similarity of all-MiniLM-L6-v2
embeddings of a generated step g and a reference step r:

    precision = mean over generated steps g of  max_r cos(g, r)
    recall    = mean over reference steps r of  max_g cos(g, r)
    F1        = 2 * precision * recall / (precision + recall)

reported on a 0-100 scale. A workflow may be Mermaid text (its process and decision steps, not
the terminals), a numbered or bulleted step list, a list of step strings, or a `Workflow`.
An empty generated (or reference) workflow scores 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol, Union

import numpy as np
from pydantic import BaseModel, Field

from core.embeddings import shared_embedder
from core.workflow import MermaidError, Workflow, WorkflowError, clean_step_text, parse_mermaid, parse_step_list

WorkflowLike = Union[str, Sequence[str], Workflow]
_MERMAID_HEAD = re.compile(r"^\s*(?:```\s*mermaid\s*)?(?:flowchart|graph)\s+(?:TD|TB|BT|LR|RL)\b", re.I)


class _Encoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


class StepScore(BaseModel):
    precision: float = Field(description="Mean best similarity of each generated step (0-100).")
    recall: float = Field(description="Mean best similarity of each reference step (0-100).")
    f1: float = Field(description="Harmonic mean of precision and recall (0-100).")
    generated_steps: int = Field(default=0, description="Steps found in the generated workflow.")
    reference_steps: int = Field(default=0, description="Steps found in the reference workflow.")


def _dedupe(steps: Iterable[str]) -> list[str]:
    out, seen = [], set()
    for s in steps:
        s = clean_step_text(str(s))
        key = re.sub(r"\W+", " ", s.lower()).strip()
        if key and key not in seen:
            seen.add(key)
            out.append(s)
    return out


def workflow_steps(workflow: WorkflowLike | None) -> list[str]:
    """The step set of a workflow given as Mermaid, a step list, a list of strings or a Workflow."""
    if workflow is None:
        return []
    if isinstance(workflow, Workflow):
        return _dedupe(workflow.action_steps())
    if isinstance(workflow, str):
        text = workflow.strip()
        if not text:
            return []
        if _MERMAID_HEAD.match(text):
            body = re.sub(r"^\s*```\s*mermaid\s*|```\s*$", "", text, flags=re.I).strip()
            try:
                return _dedupe(parse_mermaid(body).action_steps())
            except (MermaidError, WorkflowError):
                # Broken Mermaid still has labels; score what an operator could read.
                labels = re.findall(r'[\[\{(]+"?([^"\]\})]+)"?[\]\})]+', body)
                return _dedupe(x for x in labels if x.strip())
        steps = parse_step_list(text)
        if steps:
            return _dedupe(steps)
        return _dedupe(line for line in text.splitlines() if line.strip())
    return _dedupe(x for x in workflow if str(x).strip())


def _default_embedder():
    return shared_embedder()


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def _score(g: np.ndarray, r: np.ndarray) -> StepScore:
    if len(g) == 0 or len(r) == 0:
        return StepScore(precision=0.0, recall=0.0, f1=0.0, generated_steps=len(g), reference_steps=len(r))
    sim = g @ r.T  # [generated, reference] cosine similarities
    p = float(sim.max(axis=1).mean())
    rec = float(sim.max(axis=0).mean())
    f1 = 2 * p * rec / (p + rec) if (p + rec) > 0 else 0.0
    return StepScore(precision=100 * p, recall=100 * rec, f1=100 * f1, generated_steps=len(g),
                     reference_steps=len(r))


def step_score(generated: WorkflowLike | None, reference: WorkflowLike | None,
               embedder: _Encoder | None = None) -> StepScore:
    """STEPScore of one generated workflow against its reference."""
    return step_scores([(generated, reference)], embedder=embedder)[0]


def step_scores(pairs: Sequence[tuple[WorkflowLike | None, WorkflowLike | None]],
                embedder: _Encoder | None = None) -> list[StepScore]:
    """STEPScore for many (generated, reference) pairs; every distinct step is embedded once."""
    parsed = [(workflow_steps(g), workflow_steps(r)) for g, r in pairs]
    texts: list[str] = []
    index: dict[str, int] = {}
    for g, r in parsed:
        for s in (*g, *r):
            if s not in index:
                index[s] = len(texts)
                texts.append(s)
    if not texts:
        return [_score(np.zeros((0, 1)), np.zeros((0, 1))) for _ in parsed]
    enc = embedder or _default_embedder()
    vecs = _normalise(enc.encode(texts))
    out = []
    for g, r in parsed:
        gv = vecs[[index[s] for s in g]] if g else np.zeros((0, vecs.shape[1]), np.float32)
        rv = vecs[[index[s] for s in r]] if r else np.zeros((0, vecs.shape[1]), np.float32)
        out.append(_score(gv, rv))
    return out


def _words(text: str) -> frozenset[str]:
    return frozenset(w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2)


def lexical_step_f1(generated: Sequence[str], reference: Sequence[str]) -> float:
    """STEPScore's F1 with word-set Jaccard in place of MiniLM cosine (0-1, no model): cheap enough for a reward
    computed on every sample, and for comparing a correction with the workflow it replaces."""
    a, b = [_words(x) for x in generated], [_words(x) for x in reference]
    if not a or not b:
        return 0.0

    def best(x: frozenset, ys: list[frozenset]) -> float:
        return max((len(x & y) / len(x | y) if x | y else 0.0) for y in ys)

    p = sum(best(x, b) for x in a) / len(a)
    r = sum(best(y, a) for y in b) / len(b)
    return 2 * p * r / (p + r) if p + r else 0.0
