"""BM25 over incident nodes: the lexical half of hybrid retrieval.

Tickets name components, metrics and error strings ("WAL", "etcd", "inode", "x509") that a small
sentence embedder blurs together; term matching keeps them apart. Scores are normalised by the
query's own upper bound (every term matched at saturation), so they are comparable across
queries and can enter an absolute relevance threshold.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

from experts.knowledge.markdown import humanize

K1 = 1.2
B = 0.75
_STOP = {
    "the", "a", "an", "of", "in", "on", "for", "to", "and", "or", "with", "by", "at", "from", "is", "are", "was",
    "be", "been", "this", "that", "these", "those", "it", "its", "as", "into", "when", "which", "if", "can", "may",
    "not", "no", "than", "there", "their", "any", "all", "some", "has", "have", "had", "will", "would", "should",
    "could", "does", "do", "such", "other", "also", "you", "your", "we", "our", "they", "them", "then", "but",
    "since", "after", "before", "about", "over", "under", "up", "out", "one", "two", "more", "less", "very",
    "alert", "alerts", "fires", "firing", "check", "see", "use", "using", "via", "e", "g", "i", "s",
}


def terms(text: str) -> list[str]:
    """Lower-case word stems of `text`, camel case split, stop words dropped."""
    words = re.findall(r"[a-z0-9]+", humanize(text).lower())
    out = []
    for w in words:
        if w in _STOP or len(w) < 2:
            continue
        if len(w) > 4 and w.endswith("ies"):
            w = w[:-3] + "y"
        elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
            w = w[:-1]
        out.append(w)
    return out


class BM25:
    """Okapi BM25 over a fixed list of documents (a sparse term -> [(doc, weight)] table)."""

    def __init__(self, documents: list[str]):
        bags = [Counter(terms(d)) for d in documents]
        self.n = len(bags)
        lengths = np.array([sum(b.values()) for b in bags], dtype=np.float32)
        avg = float(lengths.mean()) if self.n else 0.0
        df: Counter = Counter()
        for b in bags:
            df.update(b.keys())
        self.idf = {t: math.log(1 + (self.n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        self.postings: dict[str, list[tuple[int, float]]] = {}
        for i, b in enumerate(bags):
            norm = K1 * (1 - B + B * (lengths[i] / avg if avg else 1.0))
            for t, tf in b.items():
                self.postings.setdefault(t, []).append((i, tf * (K1 + 1) / (tf + norm)))

    def scores(self, query: str) -> np.ndarray:
        """BM25 of every document for `query`, divided by the query's upper bound (0..1)."""
        out = np.zeros(self.n, dtype=np.float32)
        q = set(terms(query))
        bound = sum(self.idf.get(t, 0.0) for t in q) * (K1 + 1)
        if not q or bound <= 0:
            return out
        for t in q:
            idf = self.idf.get(t)
            if idf is None:
                continue
            for i, w in self.postings[t]:
                out[i] += idf * w
        return out / bound
