"""Retrieval on the request path: one query embedding, a faiss search over chunks, hybrid node ranking.

A node's score mixes dense and lexical evidence: the query against the incident name embedding
and against "name: failure description" (FlowXpert), BM25 over the node's own text (names,
description, steps), a small boost when one of the node's chunks is among the best chunk hits,
and a larger one when its alert name or an alias appears in the query (tickets quote
`KubePodCrashLooping`). A caller that knows the runbook's name (an alert's `alertname`, the file name
of its `runbook_url`) passes it as a retrieval key: a node whose name, alias or document file name is
exactly that key ranks first. Below a calibrated relevance nothing is returned: an unrelated runbook is
worse than none.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from core.embeddings import DenseIndex, shared_embedder
from experts.knowledge.documents import KnowledgeError
from experts.knowledge.graph import normalize_incident
from experts.knowledge.incident import TASK_TAG, NodeHit
from experts.knowledge.lexical import BM25
from experts.knowledge.store import KnowledgeStore, read_version

NAME_WEIGHT = 0.5  # the rest goes to the name+description embedding
LEXICAL_WEIGHT = 0.3  # BM25's share of a node's score (the rest is dense)
CHUNK_EVIDENCE_BOOST = 0.08
NAME_MENTION_BOOST = 0.25
# More than all other evidence can add up to (dense <= 0.7, BM25 <= 0.3, chunk evidence <= 0.19, mention 0.25),
# so a node named exactly like a retrieval key ranks above every node that is not.
KEY_MATCH_BOOST = 2.0
SCOPE_MARGIN = 0.05  # how much more relevant the whole base must be to override an expert's scope
QUERY_CACHE_SIZE = 512


class ChunkHit(BaseModel):
    id: str = Field(description="Stable chunk id (hash of source, offset and text).")
    text: str
    source: str = Field(description="Document path relative to its document folder.")
    heading_path: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    score: float = Field(description="Cosine similarity to the query.")


Scope = Literal["unscoped", "scoped", "whole base"]


class RetrievedContext(BaseModel):
    chunks: list[ChunkHit] = Field(default_factory=list)
    nodes: list[NodeHit] = Field(default_factory=list)
    version: str | None = Field(default=None, description="Knowledge-base version that answered.")
    matched: bool = Field(default=True, description="False when nothing scored above the relevance threshold: "
                                                    "the context is then empty ('none matched').")
    best_score: float | None = Field(default=None, description="Score of the best item considered.")
    scope: Scope = Field(default="unscoped", description="scoped: the expert's scope answered; whole base: the "
                                                         "scope held nothing relevant and the whole base was searched.")

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
    exact_names: dict[str, set[int]]  # squashed name, alias or document file name -> node rows
    lexical: BM25


def _load_state(store: KnowledgeStore, version: str, stamp) -> _State:
    data = read_version(store.version_dir(version), raw=False)

    index = DenseIndex(data.chunk_vectors if len(data.chunk_vectors) else
                       np.zeros((0, int(data.manifest.get("dim", 384))), np.float32))
    owner: dict[str, list[int]] = {}
    for i, n in enumerate(data.nodes):
        for s in n.sources:
            if s.startswith("c-"):
                owner.setdefault(s, []).append(i)
    names = [(i, name) for i, n in enumerate(data.nodes) for name in (n.incident, *n.aliases)]
    camel = [(i, name) for i, name in names
             if re.fullmatch(r"[A-Za-z][a-z0-9]*(?:[A-Z][A-Za-z0-9]*)+", name) and len(name) >= 8]
    keys = [(i, normalize_incident(name)) for i, name in names]
    keys = [(i, k) for i, k in keys if len(k.split()) >= 2 and len(k) >= 8]
    lexical = BM25([" ".join([n.incident, *n.aliases, n.failure_description, *n.diagnosis_steps,
                              *n.mitigation_steps]) for n in data.nodes])
    exact: dict[str, set[int]] = {}
    for i, n in enumerate(data.nodes):
        for name in (n.incident, *n.aliases, *(Path(d).stem for d in n.docs)):
            if key := squash_key(name):
                exact.setdefault(key, set()).add(i)
    return _State(version=version, stamp=stamp, manifest=data.manifest, chunks=data.chunks, chunk_index=index,
                  chunk_tags=[frozenset(c.tags) for c in data.chunks], nodes=data.nodes,
                  name_vecs=np.ascontiguousarray(data.name_vectors, np.float32),
                  desc_vecs=np.ascontiguousarray(data.desc_vectors, np.float32),
                  node_tags=[frozenset(n.tags) for n in data.nodes], chunk_owner=owner, camel_names=camel,
                  keys=keys, exact_names=exact, lexical=lexical)


def squash_key(name: str) -> str:
    """A name as retrieval keys compare it: lower case letters and digits only, so `KubePodCrashLooping`,
    `kube-pod-crash-looping.md`'s stem and `kubepodcrashlooping` agree; '' for names under 3 characters."""
    key = re.sub(r"[^a-z0-9]+", "", name.lower())
    return key if len(key) >= 3 else ""


def scope_tags(scope: list[str] | None) -> frozenset | None:
    """Tags a scope of task names (or plain document tags) matches: `storage` -> {storage, task:storage}."""
    if not scope:
        return None
    return frozenset(scope) | frozenset(f"{TASK_TAG}{s}" for s in scope)


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
    def open(cls, directory: str | Path, embedder=None) -> KnowledgeBase:
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
            self._embedder = shared_embedder()
        return self._embedder

    def tags(self) -> list[str]:
        st = self._state
        return sorted({t for ts in st.node_tags for t in ts} | {t for ts in st.chunk_tags for t in ts})

    def retrieve(self, query: str, scope: list[str] | None = None, k_chunks: int = 3, k_nodes: int = 2,
                 min_relevance: float = 0.0, exclude_sources: tuple[str, ...] = (),
                 scope_margin: float = SCOPE_MARGIN, keys: tuple[str, ...] = ()) -> RetrievedContext:
        return self.retrieve_many([query], scope=scope, k_chunks=k_chunks, k_nodes=k_nodes,
                                  min_relevance=min_relevance, exclude_sources=exclude_sources,
                                  scope_margin=scope_margin, keys=keys)[0]

    def retrieve_many(self, queries: list[str], scope: list[str] | None = None, k_chunks: int = 3,
                      k_nodes: int = 2, min_relevance: float = 0.0, exclude_sources: tuple[str, ...] = (),
                      scope_margin: float = SCOPE_MARGIN, keys: tuple[str, ...] = ()) -> list[RetrievedContext]:
        """Chunks and incident nodes per query, best first.

        With a `scope` the documents filed under its tasks (or tagged with its names) answer, unless
        the whole base holds something more relevant by more than `scope_margin`, or the scope holds
        nothing above `min_relevance`: then the whole base answers (`scope == "whole base"`). Below
        `min_relevance` everywhere, the context is empty and `matched` False. Documents in
        `exclude_sources` are never returned (held-out evaluation). A node named exactly like one of
        `keys` (every query's) ranks first (module doc).
        """
        if not queries:
            return []
        st = self._state  # one consistent version for the whole call
        qv = self._embed(queries)
        tags = scope_tags(scope)
        exclude = frozenset(exclude_sources)
        out = []
        for query, vec in zip(queries, qv):
            everywhere = self._search(st, query, vec, None, k_chunks, k_nodes, min_relevance, exclude, keys)
            if tags is None:
                out.append(everywhere)
                continue
            scoped = self._search(st, query, vec, tags, k_chunks, k_nodes, min_relevance, exclude, keys)
            better = (everywhere.best_score or 0.0) > (scoped.best_score or 0.0) + scope_margin
            if scoped.matched and not better:
                out.append(scoped)
            else:
                everywhere.scope = "whole base"
                out.append(everywhere)
        return out

    def _search(self, st: _State, query: str, vec: np.ndarray, tags: frozenset | None, k_chunks: int,
                k_nodes: int, min_relevance: float, exclude: frozenset,
                keys: tuple[str, ...] = ()) -> RetrievedContext:
        wanted = max(k_chunks, 5) if k_nodes else k_chunks
        hits = self._search_chunks(st, vec, tags, wanted, exclude)
        nodes = self._rank_nodes(st, query, vec, tags, hits, k_nodes, exclude, keys) if k_nodes > 0 else []
        if nodes:
            best = nodes[0].score
        elif k_nodes > 0 and st.nodes:
            best = None  # the scope (or the exclusion) left no node at all
        else:
            best = hits[0][1] if hits else None
        matched = best is not None and best >= min_relevance
        if not matched:
            nodes, hits = [], []
        return RetrievedContext(chunks=[self._chunk_hit(st, i, sc) for i, sc in hits[:k_chunks]], nodes=nodes,
                                version=st.version, matched=matched,
                                best_score=round(best, 4) if best is not None else None,
                                scope="unscoped" if tags is None else "scoped")

    def embed(self, queries: list[str]) -> np.ndarray:
        """Query vectors as retrieval computes them (cached: case memory reuses the ticket's vector)."""
        return self._embed(queries)

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

    def _selector(self, st: _State, tags: frozenset):
        key = (st.version, tags)
        sel = self._selectors.get(key)
        if sel is None:
            import faiss

            allowed = np.array([i for i, t in enumerate(st.chunk_tags) if t & tags], dtype=np.int64)
            sel = (faiss.IDSelectorBatch(allowed) if len(allowed) else None, len(allowed))
            self._selectors[key] = sel
        return sel

    def _search_chunks(self, st: _State, vec: np.ndarray, tags: frozenset | None, k: int,
                       exclude: frozenset) -> list[tuple[int, float]]:
        index = st.chunk_index
        if k <= 0 or len(index) == 0:
            return []
        fetch = k + (8 if exclude else 0)
        q = np.ascontiguousarray(vec[None, :], np.float32)
        if tags is None:
            scores, ids = index.search(q, min(fetch, len(index)))
        else:
            import faiss

            sel, n_allowed = self._selector(st, tags)
            if sel is None:
                return []
            scores, ids = index.index.search(q, min(fetch, n_allowed), params=faiss.SearchParameters(sel=sel))
        hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        return [(i, s) for i, s in hits if st.chunks[i].source not in exclude][:k]

    def node_scores(self, st: _State, query: str, vec: np.ndarray, chunk_hits,
                    keys: tuple[str, ...] = ()) -> np.ndarray:
        """Every node's score: dense name and description similarity, BM25, and the boosts (module doc)."""
        dense = NAME_WEIGHT * (st.name_vecs @ vec) + (1 - NAME_WEIGHT) * (st.desc_vecs @ vec)
        score = (1 - LEXICAL_WEIGHT) * dense + LEXICAL_WEIGHT * st.lexical.scores(query)
        for rank, (ci, _) in enumerate(chunk_hits[:5]):
            for ni in st.chunk_owner.get(st.chunks[ci].id, []):
                score[ni] += CHUNK_EVIDENCE_BOOST / (1 + rank)
        if query:
            mentioned: set[int] = {ni for ni, name in st.camel_names if name in query}
            norm_q = " " + normalize_incident(query) + " "
            mentioned |= {ni for ni, key in st.keys if f" {key} " in norm_q}
            for ni in mentioned:
                score[ni] += NAME_MENTION_BOOST
        named = {ni for k in keys for ni in st.exact_names.get(squash_key(k), ())}
        for ni in named:
            score[ni] += KEY_MATCH_BOOST
        return score

    def _rank_nodes(self, st: _State, query: str, vec: np.ndarray, tags: frozenset | None, chunk_hits, k: int,
                    exclude: frozenset, keys: tuple[str, ...] = ()) -> list[NodeHit]:
        if not st.nodes:
            return []
        score = self.node_scores(st, query, vec, chunk_hits, keys)
        if tags is not None or exclude:
            keep = np.array([(tags is None or bool(t & tags)) and not (exclude and exclude & set(n.sources))
                             for t, n in zip(st.node_tags, st.nodes)])
            score = np.where(keep, score, -np.inf)
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
        return NodeHit(**st.nodes[i].model_dump(), score=round(score, 4))

    # ---- lookups ---------------------------------------------------------------------------------
    def node(self, node_id: str) -> NodeHit | None:
        st = self._state
        for i, n in enumerate(st.nodes):
            if n.id == node_id:
                return self._node_hit(st, i, 1.0)
        return None

    def stats(self) -> dict:
        return dict(self._state.manifest.get("stats", {}))
