"""How well the classifier says `unknown`: tickets from another labeled set against in-domain ones.

The classifier is fitted on a set's train part (as `leaderboard classifier` does). In-domain tickets
are that set's held-out split; out-of-domain (OOD) tickets come from a different set whose topics the
classifier's tasks do not cover (IT service-desk tickets for the ops-domain set, OpsEval exam questions
for the IT-desk set). Two unknown scores are measured, the two the service gates on:

- `low_confidence`: 1 - the top fused task probability (`classifier.unknown_threshold`);
- `far_neighbours`: 1 - the nearest labeled example's similarity (`classifier.min_neighbour_similarity`).

Their AUROC (OOD as the positive class) says how separable the two groups are. A threshold on each is
calibrated on the dev split (in-domain dev tickets against one half of the OOD tickets) by Youden's J,
and the test split reports the unknown rate on in-domain tickets and the refusal rate on the other OOD
half at that threshold. Retrieval decides here: the gate runs before any LLM is asked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from core.schemas import LabeledQuery
from leaderboard.classifier_eval import EvalData
from leaderboard.tasksets import from_opseval
from router.classifier import TaskClassifier
from router.importers import import_it_tickets

SCORES = ("low_confidence", "far_neighbours")
# The other labeled set whose tickets are out of domain for each classifier set.
OOD_SOURCES = {"owl-bench": "it-tickets", "it-tickets": "opseval-en"}


@dataclass
class UnknownScores:
    low_confidence: np.ndarray
    far_neighbours: np.ndarray

    def of(self, name: str) -> np.ndarray:
        return getattr(self, name)


def ood_texts(source: str, limit: int, seed: int = 0) -> list[str]:
    """A fixed sample of `limit` texts from `source` (it-tickets, opseval-en, opseval-zh, opseval)."""
    if source == "it-tickets":
        texts = [q.text for q in import_it_tickets()]
    elif source.startswith("opseval"):
        lang = source.partition("-")[2] or None
        texts = [q.text for q in from_opseval(lang=lang).examples]
    else:
        raise ValueError(f"unknown out-of-domain source {source!r}; use it-tickets, opseval, opseval-en or opseval-zh")
    ranked = sorted(set(texts), key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    return ranked[:limit]


def halves(texts: list[str]) -> tuple[list[str], list[str]]:
    """(dev, test): alternate items of a fixed order, so the two halves never share a text."""
    return texts[0::2], texts[1::2]


def unknown_scores(clf: TaskClassifier, texts: list[str], batch_size: int = 64) -> UnknownScores:
    conf, near = [], []
    for i in range(0, len(texts), batch_size):
        neighbours, dists = clf.retrieve(texts[i:i + batch_size])
        conf += [1.0 - max(d.values()) for d in dists]
        near += [1.0 - (nb[0].similarity if nb else -1.0) for nb in neighbours]
    return UnknownScores(np.asarray(conf), np.asarray(near))


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (the Mann-Whitney statistic)."""
    if not len(negatives) or not len(positives):
        raise ValueError("AUROC needs both in-domain and out-of-domain scores")
    scores = np.concatenate([negatives, positives])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    pos_ranks = ranks[len(negatives):].sum()
    n_pos, n_neg = len(positives), len(negatives)
    return float((pos_ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def youden_threshold(negatives: np.ndarray, positives: np.ndarray) -> float:
    """The score threshold (unknown when score >= threshold) with the best TPR - FPR."""
    best, best_j = float("inf"), -1.0
    for t in np.unique(np.concatenate([negatives, positives])):
        j = float((positives >= t).mean() - (negatives >= t).mean())
        if j > best_j:
            best, best_j = float(t), j
    return best


def evaluate_unknown(dev: tuple[TaskClassifier, EvalData], test: tuple[TaskClassifier, EvalData],
                     ood_dev: list[str], ood_test: list[str]) -> dict:
    """AUROC per score on both splits, thresholds calibrated on dev, rates on test."""
    report: dict = {"n": {"dev_in": len(dev[1].test), "dev_ood": len(ood_dev), "test_in": len(test[1].test),
                          "test_ood": len(ood_test)}, "scores": {}}
    split_scores = {}
    for name, (clf, data), ood in (("dev", dev, ood_dev), ("test", test, ood_test)):
        split_scores[name] = (unknown_scores(clf, _texts(data.test)), unknown_scores(clf, ood))
    for score in SCORES:
        dev_in, dev_ood = (s.of(score) for s in split_scores["dev"])
        test_in, test_ood = (s.of(score) for s in split_scores["test"])
        t = youden_threshold(dev_in, dev_ood)
        report["scores"][score] = {
            "auroc_dev": auroc(dev_in, dev_ood), "auroc_test": auroc(test_in, test_ood),
            "threshold": t, "service_setting": _as_setting(score, t),
            "test_in_domain_unknown_rate": float((test_in >= t).mean()),
            "test_ood_unknown_rate": float((test_ood >= t).mean())}
    return report


def _texts(items: list[LabeledQuery]) -> list[str]:
    return [q.text for q in items]


def _as_setting(score: str, threshold: float) -> dict:
    """The config value that applies the threshold in the service."""
    if score == "low_confidence":
        return {"classifier.unknown_threshold": round(1.0 - threshold, 4)}
    return {"classifier.min_neighbour_similarity": round(1.0 - threshold, 4)}
