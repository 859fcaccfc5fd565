"""Building the knowledge base: documents -> chunks + vectors, raw incidents -> merged, linked nodes.

    build_knowledge_base(doc_dirs, directory)   sync the base with these folders (new version)
    add_documents(doc_dirs, directory)          add/update documents, keep everything else
    ensure_knowledge_base(cfg, llm_factory)     server start-up: build only when documents changed

Every build is incremental against the current version: a document whose content and settings
are unchanged keeps its chunks, vectors and raw nodes; only new or changed documents are chunked,
extracted and embedded, and only incident groups they touch are re-merged. Per-document results
are cached as soon as they exist, so an interrupted build continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from core.embeddings import EMBEDDER_NAME
from core.paths import cache_dir
from experts.engines.base import Engine
from experts.knowledge.chunking import Chunk, chunk_document
from experts.knowledge.documents import Document, KnowledgeError, load_documents
from experts.knowledge.extract import EXTRACT_VERSION, RawNode, extract_document, planned_method
from experts.knowledge.graph import Group, IncidentNode, Merger, compute_links, normalize_incident, refine
from experts.knowledge.store import FORMAT, DocCache, KnowledgeStore, VersionData, write_version

log = logging.getLogger(__name__)

KEEP_VERSIONS = 3


class LazyEngine(Engine):
    """An engine created on first use: builds whose documents are all runbooks never load the LLM."""

    def __init__(self, factory: Callable[[], Engine], name: str = "llm"):
        self._factory = factory
        self._engine: Engine | None = None
        self.name = name

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._factory()
        return self._engine

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def generate(self, prompts, params):
        return self.engine.generate(prompts, params)

    def loglikelihood(self, requests):
        return self.engine.loglikelihood(requests)

    def label_probs(self, prompts, labels):
        return self.engine.label_probs(prompts, labels)

    def format_prompt(self, system, user, assistant_prefix=""):
        return self.engine.format_prompt(system, user, assistant_prefix)


@dataclass
class DocResult:
    source: str
    content_hash: str
    key: str
    method: str
    title: str
    tags: list[str]
    root: str
    chunks: list[Chunk]
    vectors: np.ndarray
    raw_nodes: list[RawNode]
    origin: str = "processed"  # processed | cached | reused

    def entry(self) -> dict:
        return {"hash": self.content_hash, "key": self.key, "method": self.method, "title": self.title,
                "tags": self.tags, "root": self.root, "chunks": len(self.chunks), "raw_nodes": len(self.raw_nodes)}


@dataclass
class BuildReport:
    version: str
    directory: Path
    changed: bool  # False when the base was already up to date (no new version written)
    stats: dict = field(default_factory=dict)


def doc_key(doc: Document, chunk_chars: int, method: str) -> str:
    blob = json.dumps([EXTRACT_VERSION, FORMAT, EMBEDDER_NAME, doc.source, doc.content_hash, chunk_chars, method])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def default_directory(doc_dirs: list[str | Path]) -> Path:
    """`<cache>/knowledge/<hash of the resolved document folders>`."""
    roots = sorted(str(Path(d).expanduser().resolve()) for d in doc_dirs)
    return cache_dir() / "knowledge" / hashlib.sha256(json.dumps(roots).encode()).hexdigest()[:12]


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="doc", leave=False)


def _process(doc: Document, method: str, key: str, chunk_chars: int, llm: Engine | None, embedder) -> DocResult:
    chunks = chunk_document(doc, chunk_chars)
    raw, used = extract_document(doc, chunks, llm if method == "llm" else None)
    if used != method:  # defensive: keep the cache key honest
        raise RuntimeError(f"{doc.source}: planned {method} extraction, got {used}")
    vectors = embedder.encode([c.embed_text(doc.title) for c in chunks]) if chunks else \
        np.zeros((0, embedder.dim), np.float32)
    return DocResult(doc.source, doc.content_hash, key, method, doc.title, list(doc.tags), str(doc.root), chunks,
                     np.asarray(vectors, np.float32), raw)


def _from_cache(meta: dict, vectors: np.ndarray) -> DocResult:
    return DocResult(meta["source"], meta["hash"], meta["key"], meta["method"], meta["title"], meta["tags"],
                     meta["root"], [Chunk(**c) for c in meta["chunks"]], vectors,
                     [RawNode.from_dict(r) for r in meta["raw_nodes"]], origin="cached")


def _cache_meta(r: DocResult) -> dict:
    return {"source": r.source, "hash": r.content_hash, "key": r.key, "method": r.method, "title": r.title,
            "tags": r.tags, "root": r.root, "chunks": [c.to_dict() for c in r.chunks],
            "raw_nodes": [n.to_dict() for n in r.raw_nodes]}


def _reuse(prev: VersionData, source: str, entry: dict, chunk_rows: dict[str, list[int]]) -> DocResult:
    rows = chunk_rows.get(source, [])
    chunks = [prev.chunks[i] for i in rows]
    vecs = prev.chunk_vectors[rows] if rows else np.zeros((0, prev.chunk_vectors.shape[1]), np.float32)
    return DocResult(source, entry["hash"], entry["key"], entry["method"], entry["title"], entry["tags"],
                     entry["root"], chunks, vecs, prev.raw_nodes.get(source, []), origin="reused")


def build_knowledge_base(doc_dirs: list[str | Path], directory: str | Path, *, llm: Engine | None = None,
                         embedder=None, chunk_chars: int = 900, progress: bool = True) -> str:
    """Sync the base in `directory` with the documents in `doc_dirs`; returns the current version."""
    return run_build(doc_dirs, directory, llm=llm, embedder=embedder, chunk_chars=chunk_chars,
                     progress=progress, mode="sync").version


def add_documents(doc_dirs: list[str | Path], directory: str | Path, *, llm: Engine | None = None,
                  embedder=None, chunk_chars: int | None = None, progress: bool = True) -> str:
    """Add new and changed documents from `doc_dirs`; documents already in the base stay as they are."""
    return run_build(doc_dirs, directory, llm=llm, embedder=embedder, chunk_chars=chunk_chars,
                     progress=progress, mode="add").version


def run_build(doc_dirs: list[str | Path], directory: str | Path, *, llm: Engine | None = None, embedder=None,
              chunk_chars: int | None = 900, progress: bool = True, mode: str = "sync",
              keep_versions: int = KEEP_VERSIONS) -> BuildReport:
    if mode not in ("sync", "add"):
        raise ValueError("mode must be sync or add")
    t0 = time.perf_counter()
    scan = load_documents(doc_dirs)
    if not scan.documents:
        dirs = ", ".join(str(d) for d in doc_dirs)
        raise KnowledgeError(f"no documents found in {dirs} (looked for .md, .markdown, .txt with content)")
    store = KnowledgeStore(directory)
    with store.lock():
        prev_version = store.current_version()
        prev = store.read(prev_version) if prev_version else None
        if chunk_chars is None:
            chunk_chars = int(prev.manifest["chunk_chars"]) if prev else 900
        prev_docs: dict[str, dict] = prev.manifest["docs"] if prev else {}

        # ---- plan: reuse unchanged documents, process the rest ------------------------------
        chunk_rows: dict[str, list[int]] = {}
        if prev:
            for i, c in enumerate(prev.chunks):
                chunk_rows.setdefault(c.source, []).append(i)
        results: dict[str, DocResult] = {}
        todo: list[tuple[Document, str, str]] = []
        for doc in scan.documents:
            method = planned_method(doc, llm is not None)
            key = doc_key(doc, chunk_chars, method)
            entry = prev_docs.get(doc.source)
            if entry and entry["key"] == key:
                results[doc.source] = _reuse(prev, doc.source, entry, chunk_rows)
            else:
                todo.append((doc, method, key))
        pending = {d.source for d, _, _ in todo}
        if mode == "add":
            for source, entry in prev_docs.items():
                if source not in results and source not in pending:
                    results[source] = _reuse(prev, source, entry, chunk_rows)
        removed = sorted(set(prev_docs) - set(results) - pending)
        if not todo and not removed and prev_version is not None:
            log.info("knowledge base %s is up to date (%s)", store.root, prev_version)
            return BuildReport(prev_version, store.root, False, prev.manifest.get("stats", {}))

        if embedder is None:
            from core.embeddings import shared_embedder

            embedder = shared_embedder()
        timings: dict[str, float] = {"scan_load": time.perf_counter() - t0}

        # ---- steps 1-2 per document (cached as soon as done: resumable) -----------------------
        t = time.perf_counter()
        cache = DocCache(store.cache_dir)
        counts = {"processed": 0, "cached": 0}
        for doc, method, key in _progress(todo, "documents", progress):
            hit = cache.load(key)
            if hit is not None:
                results[doc.source] = _from_cache(*hit)
                counts["cached"] += 1
                continue
            res = _process(doc, method, key, chunk_chars, llm, embedder)
            cache.save(key, _cache_meta(res), res.vectors)
            results[doc.source] = res
            counts["processed"] += 1
        timings["extract_embed"] = time.perf_counter() - t

        # ---- step 3: merge into incident groups ---------------------------------------------------
        t = time.perf_counter()
        changed = {s for s, r in results.items() if r.origin != "reused"} | set(removed)
        prev_nodes = {n.id: n for n in prev.nodes} if prev else {}
        groups: list[Group] = []
        affected: set[str] = set()
        if prev:
            raw_by_ref = {r.ref: r for rs in prev.raw_nodes.values() for r in rs}
            for i, n in enumerate(prev.nodes):
                members = [raw_by_ref[m] for m in n.members if m in raw_by_ref
                           and m.rsplit("#", 1)[0] not in changed]
                if len(members) != len(n.members):
                    affected.add(n.id)
                groups.append(Group(n.id, n.key, prev.name_vectors[i], members))
        new_raw = [r for s in sorted(results) if results[s].origin != "reused" for r in results[s].raw_nodes]
        merger = Merger(lambda texts: embedder.encode(texts))
        taken = {g.id for g in groups}
        affected |= merger.assign(groups, new_raw, taken)
        groups = [g for g in groups if g.members]
        nodes: list[IncidentNode] = []
        for g in groups:
            if g.id in affected or g.id not in prev_nodes:
                node = refine(g)
                node.key = g.key = normalize_incident(node.incident) or g.key
                nodes.append(node)
            else:
                nodes.append(prev_nodes[g.id])
        fresh = {n.id for n in nodes if n.id in affected or n.id not in prev_nodes}
        timings["merge"] = time.perf_counter() - t

        # ---- step 4: links, node vectors ----------------------------------------------------------
        t = time.perf_counter()
        name_vecs = np.zeros((len(nodes), embedder.dim), np.float32)
        desc_vecs = np.zeros((len(nodes), embedder.dim), np.float32)
        prev_index = {n.id: i for i, n in enumerate(prev.nodes)} if prev else {}
        todo_idx = [i for i, n in enumerate(nodes) if n.id in fresh or n.id not in prev_index]
        todo_set = set(todo_idx)
        for i, n in enumerate(nodes):
            if i not in todo_set:
                name_vecs[i] = prev.name_vectors[prev_index[n.id]]
                desc_vecs[i] = prev.desc_vectors[prev_index[n.id]]
        if todo_idx:
            enc = embedder.encode([nodes[i].name_text() for i in todo_idx]
                                  + [nodes[i].description_text() for i in todo_idx])
            name_vecs[todo_idx] = enc[: len(todo_idx)]
            desc_vecs[todo_idx] = enc[len(todo_idx):]
        links = compute_links(nodes, fresh=fresh, previous={n.id: list(n.related) for n in prev_nodes.values()},
                              vectors=desc_vecs)
        for n in nodes:
            n.related = links.get(n.id, [])
        timings["link_embed_nodes"] = time.perf_counter() - t

        # ---- write the new version ------------------------------------------------------------------
        order = sorted(results)
        chunks = [c for s in order for c in results[s].chunks]
        vec_parts = [results[s].vectors for s in order if len(results[s].chunks)]
        chunk_vecs = np.concatenate(vec_parts) if vec_parts else np.zeros((0, embedder.dim), np.float32)
        methods: dict[str, int] = {}
        for r in results.values():
            methods[r.method] = methods.get(r.method, 0) + 1
        stats = {
            "documents": len(results), "chunks": len(chunks), "nodes": len(nodes),
            "links": sum(len(n.related) for n in nodes) // 2,
            "processed": counts["processed"], "from_cache": counts["cached"],
            "reused": sum(r.origin == "reused" for r in results.values()), "removed": len(removed),
            "new_or_changed_nodes": len(fresh), "methods": methods,
            "llm_docs": sorted(s for s, r in results.items() if r.method == "llm"),
            "skipped_files": scan.skipped,
        }
        roots = sorted({r.root for r in results.values()})
        manifest = {
            "format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "embedder": EMBEDDER_NAME, "dim": int(embedder.dim), "chunk_chars": chunk_chars,
            "extract_version": EXTRACT_VERSION, "llm": getattr(llm, "name", None) if llm is not None else None,
            "roots": roots, "docs": {s: results[s].entry() for s in order}, "stats": stats,
            "previous": prev_version,
        }
        data = VersionData(manifest, chunks, chunk_vecs, nodes, name_vecs, desc_vecs,
                           {s: results[s].raw_nodes for s in order})
        t = time.perf_counter()
        with store.new_version() as (version, folder):
            manifest["version"] = version
            timings["total"] = time.perf_counter() - t0
            stats["seconds"] = {k: round(v, 3) for k, v in timings.items()}
            write_version(folder, data)
        stats["seconds"]["write"] = round(time.perf_counter() - t, 3)
        stats["seconds"]["total"] = round(time.perf_counter() - t0, 3)
        store.prune(keep_versions)
        cache.prune({results[s].key for s in order})
        log.info("knowledge base %s: %s (%d docs, %d chunks, %d nodes, %d links; %d processed)", store.root,
                 version, stats["documents"], stats["chunks"], stats["nodes"], stats["links"], stats["processed"])
        return BuildReport(version, store.root, True, stats)


def _up_to_date(store: KnowledgeStore, doc_dirs: list[str], chunk_chars: int, llm_available: bool) -> bool:
    version = store.current_version()
    if version is None:
        return False
    manifest = store.manifest(version)
    scan = load_documents(doc_dirs)
    planned = {d.source: doc_key(d, chunk_chars, planned_method(d, llm_available)) for d in scan.documents}
    built = {s: e["key"] for s, e in manifest["docs"].items()}
    return planned == built


def ensure_knowledge_base(cfg, llm_factory: Callable[[], Engine] | None = None, *, embedder=None,
                          progress: bool = False) -> Path:
    """The base for `cfg` (a KnowledgeConfig), built or updated first when its documents changed.

    Without an LLM factory unstructured documents use the heuristic extractor; with one, the LLM is
    only loaded if some document actually needs it.
    """
    if not cfg.docs:
        raise KnowledgeError("knowledge.docs lists no document folders")
    directory = Path(cfg.directory).expanduser() if cfg.directory else default_directory(cfg.docs)
    store = KnowledgeStore(directory)
    if _up_to_date(store, list(cfg.docs), cfg.chunk_chars, llm_factory is not None):
        return directory
    llm = LazyEngine(llm_factory) if llm_factory is not None else None
    run_build(list(cfg.docs), directory, llm=llm, embedder=embedder, chunk_chars=cfg.chunk_chars,
              progress=progress, mode="sync")
    return directory
