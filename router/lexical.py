"""Supervised lexical classifier: word + character n-gram TF-IDF with a LinearSVC, calibrated to probabilities.

This is the strong cheap text classifier (the evaluator's baseline is the same features and model,
uncalibrated). Character n-grams (char_wb) make it work on Chinese, error codes and host names;
word uni/bigrams carry English topics. `CalibratedClassifierCV` turns the SVC's margins into a
distribution over tasks (sigmoid by default: it is stable with few examples per task) so it can be
fused with the neighbour vote and the MiniLM head (router/fusion.py).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import Counter

from router.head import probs_in_task_order

log = logging.getLogger(__name__)


def lexical_features(char_range: tuple[int, int] = (2, 4)):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion([
        ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True,
                                 token_pattern=r"(?u)\b\w+\b")),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=char_range, sublinear_tf=True)),
    ])


class LexicalSVC:
    """TF-IDF (word 1-2 + char_wb n-grams) + LinearSVC(C), sigmoid/isotonic-calibrated with `folds`-fold CV."""

    def __init__(self, texts: list[str], tasks: list[str], names: list[str], c: float = 1.0,
                 calibration: str = "sigmoid", folds: int = 3, char_range: tuple[int, int] = (2, 4), seed: int = 0):
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import LinearSVC

        t0 = time.perf_counter()
        self.names = list(names)
        counts = Counter(tasks)
        self.single = next(iter(counts)) if len(counts) == 1 else None
        if self.single is not None:
            return
        self.features = lexical_features(tuple(char_range))
        x = self.features.fit_transform(texts)
        svc = LinearSVC(C=c, random_state=seed)
        # Calibration needs every fold to see every task; with very few examples per task fall back to
        # fewer folds (at least 2; a task with a single example then just gets little mass).
        cv = max(2, min(folds, min(counts.values())))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "least populated class has only 1 member" on tiny sets
            # ensemble=False: one SVC fitted on every example, calibrated on cross-validated margins (an
            # average of fold SVCs, each on less data, ranks tasks worse than the single SVC).
            self.model = CalibratedClassifierCV(svc, method=calibration, cv=cv, ensemble=False)
            self.model.fit(x, tasks)
        self.classes = list(self.model.classes_)
        log.info("lexical SVC trained on %d examples, %d features in %.1fs", len(texts), x.shape[1],
                 time.perf_counter() - t0)

    def probs_matrix(self, texts: list[str]):
        """(len(texts), len(names)) probabilities in `names` order."""

        return probs_in_task_order(self, len(texts), lambda: self.features.transform(texts))

    def probs(self, texts: list[str]) -> list[dict[str, float]]:
        return [dict(zip(self.names, map(float, row))) for row in self.probs_matrix(texts)]
