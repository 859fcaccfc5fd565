"""Retrieval on the request path: one query embedding, a faiss search over chunks, a dot product over nodes.

Node similarity follows FlowXpert: the query against the incident name embedding, and against
"name: failure description". Two cheap extras help real tickets: a node whose own chunk is among
the best chunk hits gets a small boost, and so does a node whose alert name appears verbatim in
the query (tickets often quote `KubePodCrashLooping`).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from experts.knowledge.documents import KnowledgeError
from experts.knowledge.graph import normalize_incident
from experts.knowledge.store import KnowledgeStore, read_version

NAME_WEIGHT = 0.5  # the rest goes to the name+description embedding
CHUNK_EVIDENCE_BOOST = 0.08
NAME_MENTION_BOOST = 0.25
QUERY_CACHE_SIZE = 512


class ChunkHit(BaseModel):
    id: str = Field(description="Stable chunk id (hash of source, offset and text).")
    text: str
    source: str = Field(description="Document path relative to its document folder.")
    heading_path: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    score: float = Field(description="Cosine similarity to the query.")


class NodeHit(BaseModel):
    id: str
    incident: str
    failure_description: str = ""
    diagnosis_steps: list[str] = Field(default_factory=list)
    mitigation_steps: list[str] = Field(default_factory=list)
    typical_cases: list[str] = Field(default_factory=list)
    notes: str = ""
    sources: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    related: list[str] = Field(default_factory=list)
    score: float


class RetrievedContext(BaseModel):
    chunks: list[ChunkHit] = Field(default_factory=list)
    nodes: list[NodeHit] = Field(default_factory=list)
    version: str | None = Field(default=None, description="Knowledge-base version that answered.")

    def ids(self) -> list[str]:
        return [n.id for n in self.nodes] + [c.id for c in self.chunks]


@dataclass
class _State:
    version: str
    stamp: tuple | None
    manifest: dict
    chunks: list
    chunk_index: object  # faiss index
    chunk_tags: list[frozenset]
    nodes: list
    name_vecs: np.ndarray
    desc_vecs: np.ndarray
    node_tags: list[frozenset]
    chunk_owner: dict[str, list[int]]  # chunk id -> node rows
    camel_names: list[tuple[int, str]]
    keys: list[tuple[int, str]]


def _load_state(store: KnowledgeStore, version: str, stamp) -> _State:
    data = read_version(store.version_dir(version), raw=False)
    from core.embeddings import DenseIndex

    index = DenseIndex(data.chunk_vectors if len(data.chunk_vectors) else
                       np.zeros((0, int(data.manifest.get("dim", 384))), np.float32))
    owner: dict[str, list[int]] = {}
    for i, n in enumerate(data.nodes):
        for s in n.sources:
            if s.startswith("c-"):
                owner.setdefault(s, []).append(i)
    camel = [(i, n.incident) for i, n in enumerate(data.nodes)
             if re.fullmatch(r"[A-Za-z][a-z0-9]*(?:[A-Z][A-Za-z0-9]*)+", n.incident) and len(n.incident) >= 8]
    keys = [(i, n.key) for i, n in enumerate(data.nodes) if len(n.key.split()) >= 2 and len(n.key) >= 8]
    return _State(version=version, stamp=stamp, manifest=data.manifest, chunks=data.chunks, chunk_index=index,
                  chunk_tags=[frozenset(c.tags) for c in data.chunks], nodes=data.nodes,
                  name_vecs=np.ascontiguousarray(data.name_vectors, np.float32),
                  desc_vecs=np.ascontiguousarray(data.desc_vectors, np.float32),
                  node_tags=[frozenset(n.tags) for n in data.nodes], chunk_owner=owner, camel_names=camel,
                  keys=keys)


class KnowledgeBase:
    """A loaded version of a knowledge base; `reload_if_changed()` swaps in a newer one in place."""

    def __init__(self, store: KnowledgeStore, state: _State, embedder=None):
        self.store = store
        self._state = state
        self._embedder = embedder
        self._reload_lock = threading.Lock()
        self._selectors: dict[tuple[str, frozenset], object] = {}
        self._qcache: OrderedDict[str, np.ndarray] = OrderedDict()

    @classmethod
    def open(cls, directory: str | Path, embedder=None) -> "KnowledgeBase":
        store = KnowledgeStore(directory)
        stamp = store.pointer_stamp()
        version = store.current_version()
        if version is None:
            raise KnowledgeError(f"no knowledge base in {directory} (build one with `flowrouter kb build`)")
        return cls(store, _load_state(store, version, stamp), embedder)

    # ---- version pick-up ------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self._state.version

    @property
    def manifest(self) -> dict:
        return self._state.manifest

    @property
    def directory(self) -> Path:
        return self.store.root

    def reload_if_changed(self) -> bool:
        """Load the current version if the pointer moved (one stat() when it did not)."""
        stamp = self.store.pointer_stamp()
        if stamp == self._state.stamp:
            return False
        with self._reload_lock:
            if stamp == self._state.stamp:
                return False
            version = self.store.current_version()
            if version is None or version == self._state.version:
                self._state.stamp = stamp
                return False
            self._state = _load_state(self.store, version, stamp)
            self._selectors.clear()
            return True

    # ---- retrieval ---------------------------------------------------------------------------------
    @property
    def embedder(self):
        if self._embedder is None:
            from core.embeddings import shared_embedder

            self._embedder = shared_embedder()
        return self._embedder

    def tags(self) -> list[str]:
        st = self._state
        return sorted({t for ts in st.node_tags for t in ts} | {t for ts in st.chunk_tags for t in ts})

    def retrieve(self, query: str, scope: list[str] | None = None, k_chunks: int = 3,
                 k_nodes: int = 2) -> RetrievedContext:
        return self.retrieve_many([query], scope=scope, k_chunks=k_chunks, k_nodes=k_nodes)[0]

    def retrieve_many(self, queries: list[str], scope: list[str] | None = None, k_chunks: int = 3,
                      k_nodes: int = 2) -> list[RetrievedContext]:
        if not queries:
            return []
        st = self._state  # one consistent version for the whole call
        qv = self._embed(queries)
        scope_set = frozenset(scope) if scope else None
        chunk_hits = self._search_chunks(st, qv, scope_set, max(k_chunks, 5) if k_nodes else k_chunks)
        out = []
        for qi, q in enumerate(queries):
            hits = chunk_hits[qi]
            nodes = self._rank_nodes(st, q, qv[qi], scope_set, hits, k_nodes) if k_nodes > 0 else []
            out.append(RetrievedContext(chunks=[self._chunk_hit(st, i, s) for i, s in hits[:k_chunks]],
                                        nodes=nodes, version=st.version))
        return out

    def _embed(self, queries: list[str]) -> np.ndarray:
        """Query vectors; recent queries are cached (every expert retrieves for the same ticket)."""
        texts = [q or "" for q in queries]
        missing = list(dict.fromkeys(t for t in texts if t not in self._qcache))
        if missing:
            vecs = self.embedder.encode(missing)
            with self._reload_lock:
                for t, v in zip(missing, vecs):
                    self._qcache[t] = v
                    self._qcache.move_to_end(t)
                while len(self._qcache) > QUERY_CACHE_SIZE:
                    self._qcache.popitem(last=False)
        out = []
        for t in texts:
            v = self._qcache.get(t)
            if v is None:  # evicted by a concurrent call
                v = self.embedder.encode([t])[0]
            out.append(v)
        return np.ascontiguousarray(np.stack(out), np.float32)

    def _selector(self, st: _State, scope: frozenset):
        key = (st.version, scope)
        sel = self._selectors.get(key)
        if sel is None:
            import faiss

            allowed = np.array([i for i, t in enumerate(st.chunk_tags) if t & scope], dtype=np.int64)
            sel = (faiss.IDSelectorBatch(allowed) if len(allowed) else None, len(allowed))
            self._selectors[key] = sel
        return sel

    def _search_chunks(self, st: _State, qv: np.ndarray, scope: frozenset | None, k: int):
        index = st.chunk_index
        if k <= 0 or len(index) == 0:
            return [[] for _ in range(len(qv))]
        if scope is None:
            scores, ids = index.search(qv, k)
        else:
            import faiss

            sel, n_allowed = self._selector(st, scope)
            if sel is None:
                return [[] for _ in range(len(qv))]
            k = min(k, n_allowed)
            scores, ids = index.index.search(np.ascontiguousarray(qv, np.float32), k,
                                             params=faiss.SearchParameters(sel=sel))
        return [[(int(i), float(s)) for i, s in zip(ids[r], scores[r]) if i >= 0] for r in range(len(qv))]

    def _rank_nodes(self, st: _State, query: str, q: np.ndarray, scope: frozenset | None, chunk_hits,
                    k: int) -> list[NodeHit]:
        if not st.nodes:
            return []
        score = NAME_WEIGHT * (st.name_vecs @ q) + (1 - NAME_WEIGHT) * (st.desc_vecs @ q)
        for rank, (ci, _) in enumerate(chunk_hits[:5]):
            for ni in st.chunk_owner.get(st.chunks[ci].id, []):
                score[ni] += CHUNK_EVIDENCE_BOOST / (1 + rank)
        if query:
            for ni, name in st.camel_names:
                if name in query:
                    score[ni] += NAME_MENTION_BOOST
            norm_q = " " + normalize_incident(query) + " "
            for ni, key in st.keys:
                if f" {key} " in norm_q:
                    score[ni] += NAME_MENTION_BOOST
        if scope is not None:
            mask = np.array([bool(t & scope) for t in st.node_tags])
            score = np.where(mask, score, -np.inf)
        k = min(k, int(np.isfinite(score).sum()))
        if k <= 0:
            return []
        top = np.argpartition(-score, k - 1)[:k]
        top = top[np.argsort(-score[top])]
        return [self._node_hit(st, int(i), float(score[i])) for i in top]

    @staticmethod
    def _chunk_hit(st: _State, i: int, score: float) -> ChunkHit:
        c = st.chunks[i]
        return ChunkHit(id=c.id, text=c.text, source=c.source, heading_path=list(c.heading_path),
                        tags=list(c.tags), score=round(score, 4))

    @staticmethod
    def _node_hit(st: _State, i: int, score: float) -> NodeHit:
        n = st.nodes[i]
        return NodeHit(id=n.id, incident=n.incident, failure_description=n.failure_description,
                       diagnosis_steps=list(n.diagnosis_steps), mitigation_steps=list(n.mitigation_steps),
                       typical_cases=list(n.typical_cases), notes=n.notes, sources=list(n.sources),
                       tags=list(n.tags), related=list(n.related), score=round(score, 4))

    # ---- lookups ---------------------------------------------------------------------------------
    def node(self, node_id: str) -> NodeHit | None:
        st = self._state
        for i, n in enumerate(st.nodes):
            if n.id == node_id:
                return self._node_hit(st, i, 1.0)
        return None

    def stats(self) -> dict:
        return dict(self._state.manifest.get("stats", {}))
