"""Supervised head over the retrieval features: a linear classifier trained on the labeled examples.

The neighbour vote only looks at the k nearest examples; with hundreds or thousands of labeled
examples a linear model over all of them generalises better. Features are the same ones retrieval
uses: the MiniLM vector of the text and the character n-gram TF-IDF of the lexical index, plus word
uni/bigram TF-IDF. A multinomial logistic regression gives a distribution over tasks that the
classifier mixes with the vote (`classifier.head_weight`) into the retrieval-side distribution; the
cascade and the LLM combination then work on that distribution unchanged.
"""

from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger(__name__)


class LinearHead:
    def __init__(self, texts: list[str], tasks: list[str], names: list[str], dense: np.ndarray, lexical,
                 c: float = 4.0, dense_scale: float = 1.0, seed: int = 0):
        """`dense`: the examples' L2-normalised MiniLM vectors; `lexical`: a fitted LexicalIndex over
        the same texts (its char n-gram matrix is reused)."""
        from scipy import sparse
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        t0 = time.perf_counter()
        self.names = list(names)
        self.char = lexical.vectorizer  # only the fitted vectorizer is kept (the artefact stays small)
        self.dense_scale = dense_scale
        self.words = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=1,
                                     lowercase=True, token_pattern=r"(?u)\b\w+\b")
        words = self.words.fit_transform(texts)
        x = sparse.hstack([sparse.csr_matrix(dense * dense_scale), lexical.matrix, words]).tocsr()
        present = sorted(set(tasks))
        self.single = present[0] if len(present) == 1 else None
        if self.single is None:
            self.model = LogisticRegression(C=c, max_iter=300, random_state=seed)
            self.model.fit(x, tasks)
            self.classes = list(self.model.classes_)
        log.info("linear head trained on %d examples, %d features in %.1fs", len(texts), x.shape[1],
                 time.perf_counter() - t0)

    def features(self, texts: list[str], dense: np.ndarray):
        from scipy import sparse

        return sparse.hstack([sparse.csr_matrix(dense * self.dense_scale), self.char.transform(texts),
                              self.words.transform(texts)]).tocsr()

    def probs_matrix(self, texts: list[str], dense: np.ndarray) -> np.ndarray:
        """(len(texts), len(names)) probabilities in `names` order (tasks without examples get 0)."""
        return probs_in_task_order(self, len(texts), lambda: self.features(texts, dense))

    def probs(self, texts: list[str], dense: np.ndarray) -> list[dict[str, float]]:
        """Distribution over every task name (tasks without examples get 0)."""
        return [dict(zip(self.names, map(float, row))) for row in self.probs_matrix(texts, dense)]


def probs_in_task_order(clf, rows: int, features) -> np.ndarray:
    """A fitted classifier's (`model`, `classes`, `single`, `names`) probabilities as a (rows, len(names))
    matrix in `names` order; `features()` builds its input only when there is something to predict."""
    out = np.zeros((rows, len(clf.names)), dtype=np.float64)
    if not rows:
        return out
    if clf.single is not None:
        out[:, clf.names.index(clf.single)] = 1.0
        return out
    p = clf.model.predict_proba(features())
    for j, cls in enumerate(clf.classes):
        out[:, clf.names.index(cls)] = p[:, j]
    return out
