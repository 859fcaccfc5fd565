"""Building the knowledge base: documents -> chunks + vectors, raw incidents -> merged, linked nodes.

    build_knowledge_base(doc_dirs, directory)   sync the base with these folders (new version)
    add_documents(doc_dirs, directory)          add/update documents, keep everything else
    ensure_knowledge_base(cfg, llm_factory)     server start-up: build only when documents changed

Every build is incremental against the current version: a document whose content and settings
are unchanged keeps its chunks, vectors and incident mentions; only new or changed documents are chunked,
extracted and embedded, and only incident groups they touch are re-merged. Per-document results
are cached as soon as they exist, so an interrupted build continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

from core.embeddings import EMBEDDER_NAME, shared_embedder
from core.paths import cache_dir
from experts.engines.base import Engine
from experts.knowledge.chunking import Chunk, chunk_document
from experts.knowledge.documents import Document, KnowledgeError, load_documents
from experts.knowledge.extract import EXTRACT_VERSION, extract_document, planned_method
from experts.knowledge.graph import Group, Merger, compute_links, normalize_incident, refine
from experts.knowledge.incident import TASK_TAG, IncidentMention, IncidentNode
from experts.knowledge.store import FORMAT, DocCache, KnowledgeStore, VersionData, write_version
from experts.knowledge.workflows import REFERENCE_VERSION

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
    raw_nodes: list[IncidentMention]
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
    blob = json.dumps([EXTRACT_VERSION, REFERENCE_VERSION, FORMAT, EMBEDDER_NAME, doc.source, doc.content_hash,
                       chunk_chars, method])
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
                     [IncidentMention.model_validate(r) for r in meta["raw_nodes"]], origin="cached")


def _cache_meta(r: DocResult) -> dict:
    return {"source": r.source, "hash": r.content_hash, "key": r.key, "method": r.method, "title": r.title,
            "tags": r.tags, "root": r.root, "chunks": [c.to_dict() for c in r.chunks],
            "raw_nodes": [n.model_dump() for n in r.raw_nodes]}


def _reuse(prev: VersionData, source: str, entry: dict, chunk_rows: dict[str, list[int]]) -> DocResult:
    rows = chunk_rows.get(source, [])
    chunks = [prev.chunks[i] for i in rows]
    vecs = prev.chunk_vectors[rows] if rows else np.zeros((0, prev.chunk_vectors.shape[1]), np.float32)
    return DocResult(source, entry["hash"], entry["key"], entry["method"], entry["title"], entry["tags"],
                     entry["root"], chunks, vecs, prev.raw_nodes.get(source, []), origin="reused")


class TaskAssigner(Protocol):
    """Files documents under the service's tasks (an expert's `knowledge_scope` names tasks)."""

    fingerprint: str  # changes when the assignment could (task set, labeled examples, classifier)

    def __call__(self, documents: list[Document]) -> dict[str, dict]:
        """source -> {"tasks": [...], "by": "folder" | "classifier" | "folder+classifier", ...}."""


def build_knowledge_base(doc_dirs: list[str | Path], directory: str | Path, *, llm: Engine | None = None,
                         embedder=None, chunk_chars: int = 900, progress: bool = True,
                         assign_tasks: TaskAssigner | None = None) -> str:
    """Sync the base in `directory` with the documents in `doc_dirs`; returns the current version."""
    return run_build(doc_dirs, directory, llm=llm, embedder=embedder, chunk_chars=chunk_chars,
                     progress=progress, mode="sync", assign_tasks=assign_tasks).version


def add_documents(doc_dirs: list[str | Path], directory: str | Path, *, llm: Engine | None = None,
                  embedder=None, chunk_chars: int | None = None, progress: bool = True,
                  assign_tasks: TaskAssigner | None = None) -> str:
    """Add new and changed documents from `doc_dirs`; documents already in the base stay as they are."""
    return run_build(doc_dirs, directory, llm=llm, embedder=embedder, chunk_chars=chunk_chars,
                     progress=progress, mode="add", assign_tasks=assign_tasks).version


@dataclass
class _Build:
    """What one build knows as it goes through its steps."""

    store: KnowledgeStore
    prev_version: str | None
    prev: VersionData | None
    chunk_chars: int
    results: dict[str, DocResult] = field(default_factory=dict)
    todo: list[tuple[Document, str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"processed": 0, "cached": 0})
    tasks: dict[str, dict] = field(default_factory=dict)
    retagged: set[str] = field(default_factory=set)

    @property
    def prev_docs(self) -> dict[str, dict]:
        return self.prev.manifest["docs"] if self.prev else {}


def run_build(doc_dirs: list[str | Path], directory: str | Path, *, llm: Engine | None = None, embedder=None,
              chunk_chars: int | None = 900, progress: bool = True, mode: str = "sync",
              keep_versions: int = KEEP_VERSIONS, assign_tasks: TaskAssigner | None = None) -> BuildReport:
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
        b = _Build(store, prev_version, prev, chunk_chars)
        _plan(b, scan, llm is not None, mode)
        assigner_id = getattr(assign_tasks, "fingerprint", None)
        same_assigner = prev is not None and prev.manifest.get("task_assigner") == assigner_id
        if not b.todo and not b.removed and prev_version is not None and same_assigner:
            log.info("knowledge base %s is up to date (%s)", store.root, prev_version)
            return BuildReport(prev_version, store.root, False, prev.manifest.get("stats", {}))
        if embedder is None:
            embedder = shared_embedder()
        b.timings["scan_load"] = time.perf_counter() - t0
        _extract(b, llm, embedder, progress)
        _assign_tasks(b, scan.documents, assign_tasks)
        nodes, fresh = _merge(b, embedder)
        name_vecs, desc_vecs = _link(b, nodes, fresh, embedder)
        report = _write(b, nodes, fresh, name_vecs, desc_vecs, embedder, llm, scan, assigner_id, t0)
        store.prune(keep_versions)
        DocCache(store.cache_dir).prune({r.key for r in b.results.values()})
        return report


def _plan(b: _Build, scan, llm_available: bool, mode: str) -> None:
    """Reuse unchanged documents, queue the rest."""
    chunk_rows: dict[str, list[int]] = {}
    if b.prev:
        for i, c in enumerate(b.prev.chunks):
            chunk_rows.setdefault(c.source, []).append(i)
    for doc in scan.documents:
        method = planned_method(doc, llm_available)
        key = doc_key(doc, b.chunk_chars, method)
        entry = b.prev_docs.get(doc.source)
        if entry and entry["key"] == key:
            b.results[doc.source] = _reuse(b.prev, doc.source, entry, chunk_rows)
        else:
            b.todo.append((doc, method, key))
    pending = {d.source for d, _, _ in b.todo}
    if mode == "add":
        for source, entry in b.prev_docs.items():
            if source not in b.results and source not in pending:
                b.results[source] = _reuse(b.prev, source, entry, chunk_rows)
    b.removed = sorted(set(b.prev_docs) - set(b.results) - pending)


def _extract(b: _Build, llm: Engine | None, embedder, progress: bool) -> None:
    """FlowXpert steps 1-2 per document, cached as soon as done (resumable)."""
    t = time.perf_counter()
    cache = DocCache(b.store.cache_dir)
    for doc, method, key in _progress(b.todo, "documents", progress):
        hit = cache.load(key)
        if hit is not None:
            b.results[doc.source] = _from_cache(*hit)
            b.counts["cached"] += 1
            continue
        res = _process(doc, method, key, b.chunk_chars, llm, embedder)
        cache.save(key, _cache_meta(res), res.vectors)
        b.results[doc.source] = res
        b.counts["processed"] += 1
    b.timings["extract_embed"] = time.perf_counter() - t


def _assign_tasks(b: _Build, documents: list[Document], assign: TaskAssigner | None) -> None:
    """File every document under tasks and tag its chunks and raw incidents `task:<name>`."""
    t = time.perf_counter()
    fresh = assign(documents) if assign is not None else {}
    for source, r in b.results.items():
        entry: dict = {}
        if assign is not None:  # documents not scanned this time ("add" builds) keep their earlier filing
            entry = fresh.get(source) or {k: v for k, v in b.prev_docs.get(source, {}).items()
                                          if k in ("tasks", "tasks_by", "task_confidence")}
        b.tasks[source] = entry
        tags = list(dict.fromkeys([*r.tags, *(f"{TASK_TAG}{t}" for t in entry.get("tasks", []))]))
        if b.prev_docs.get(source, {}).get("tasks", []) != entry.get("tasks", []):
            b.retagged.add(source)
        for c in r.chunks:
            c.tags = list(tags)
        for raw in r.raw_nodes:
            raw.tags = list(tags)
    b.timings["assign_tasks"] = time.perf_counter() - t


def _merge(b: _Build, embedder) -> tuple[list[IncidentNode], set[str]]:
    """FlowXpert step 3: raw incidents into groups; groups a changed document touches are refined again."""
    t = time.perf_counter()
    changed = {s for s, r in b.results.items() if r.origin != "reused"} | set(b.removed) | b.retagged
    prev = b.prev
    prev_nodes = {n.id: n for n in prev.nodes} if prev else {}
    groups: list[Group] = []
    affected: set[str] = set()
    if prev:
        raw_by_ref = {r.ref: r for rs in prev.raw_nodes.values() for r in rs}
        for i, n in enumerate(prev.nodes):
            members = [raw_by_ref[m] for m in n.members if m in raw_by_ref and m.rsplit("#", 1)[0] not in changed]
            if len(members) != len(n.members):
                affected.add(n.id)
            groups.append(Group(n.id, n.key, prev.name_vectors[i], members))
    new_raw = [r for s in sorted(b.results) if s in changed for r in b.results[s].raw_nodes]
    merger = Merger(lambda texts: embedder.encode(texts))
    affected |= merger.assign(groups, new_raw, {g.id for g in groups})
    nodes: list[IncidentNode] = []
    for g in (g for g in groups if g.members):
        if g.id in affected or g.id not in prev_nodes:
            node = refine(g)
            node.key = g.key = normalize_incident(node.incident) or g.key
            nodes.append(node)
        else:
            nodes.append(prev_nodes[g.id])
    fresh = {n.id for n in nodes if n.id in affected or n.id not in prev_nodes}
    _carry_consolidated(b, nodes, fresh)
    b.timings["merge"] = time.perf_counter() - t
    return nodes, fresh


def _carry_consolidated(b: _Build, nodes: list[IncidentNode], fresh: set[str]) -> None:
    """Nodes an admin approved from case memory (experts/knowledge/consolidate.py) outlive rebuilds: a new one has
    no document behind it to be merged from, and a revised one keeps the operator's workflow when its documents
    are merged again."""
    kinds = (b.prev.manifest.get("consolidation") or {}).get("nodes", {}) if b.prev else {}
    if not kinds:
        return
    prev = {n.id: n for n in b.prev.nodes}
    at = {n.id: i for i, n in enumerate(nodes)}
    for node_id, kind in kinds.items():
        old = prev.get(node_id)
        if old is None:
            continue
        if node_id not in at:
            if kind == "add":
                nodes.append(old)
            continue
        if node_id in fresh:
            nodes[at[node_id]] = nodes[at[node_id]].model_copy(update={
                k: getattr(old, k) for k in ("workflow", "diagnosis_steps", "mitigation_steps")})


def _link(b: _Build, nodes: list[IncidentNode], fresh: set[str], embedder) -> tuple[np.ndarray, np.ndarray]:
    """FlowXpert step 4: node vectors (reused where unchanged) and links."""
    t = time.perf_counter()
    prev = b.prev
    name_vecs = np.zeros((len(nodes), embedder.dim), np.float32)
    desc_vecs = np.zeros((len(nodes), embedder.dim), np.float32)
    prev_index = {n.id: i for i, n in enumerate(prev.nodes)} if prev else {}
    todo = [i for i, n in enumerate(nodes) if n.id in fresh or n.id not in prev_index]
    for i in set(range(len(nodes))) - set(todo):
        name_vecs[i] = prev.name_vectors[prev_index[nodes[i].id]]
        desc_vecs[i] = prev.desc_vectors[prev_index[nodes[i].id]]
    if todo:
        enc = embedder.encode([nodes[i].name_text() for i in todo] + [nodes[i].description_text() for i in todo])
        name_vecs[todo] = enc[: len(todo)]
        desc_vecs[todo] = enc[len(todo):]
    previous = {n.id: list(n.related) for n in prev.nodes} if prev else {}
    links = compute_links(nodes, fresh=fresh, previous=previous, vectors=desc_vecs)
    for n in nodes:
        n.related = links.get(n.id, [])
    b.timings["link_embed_nodes"] = time.perf_counter() - t
    return name_vecs, desc_vecs


def _write(b: _Build, nodes, fresh, name_vecs, desc_vecs, embedder, llm, scan, assigner_id, t0) -> BuildReport:
    order = sorted(b.results)
    results = b.results
    chunks = [c for s in order for c in results[s].chunks]
    vec_parts = [results[s].vectors for s in order if len(results[s].chunks)]
    chunk_vecs = np.concatenate(vec_parts) if vec_parts else np.zeros((0, embedder.dim), np.float32)
    methods: dict[str, int] = {}
    for r in results.values():
        methods[r.method] = methods.get(r.method, 0) + 1
    stats = {
        "documents": len(results), "chunks": len(chunks), "nodes": len(nodes),
        "links": sum(len(n.related) for n in nodes) // 2,
        "processed": b.counts["processed"], "from_cache": b.counts["cached"],
        "reused": sum(r.origin == "reused" for r in results.values()), "removed": len(b.removed),
        "new_or_changed_nodes": len(fresh), "methods": methods,
        "llm_docs": sorted(s for s, r in results.items() if r.method == "llm"),
        "skipped_files": scan.skipped,
        "tasks": task_counts(b.tasks),
    }
    docs = {s: {**results[s].entry(), **b.tasks.get(s, {})} for s in order}
    manifest = {
        "format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "embedder": EMBEDDER_NAME, "dim": int(embedder.dim), "chunk_chars": b.chunk_chars,
        "extract_version": EXTRACT_VERSION, "llm": getattr(llm, "name", None) if llm is not None else None,
        "roots": sorted({r.root for r in results.values()}), "docs": docs, "stats": stats,
        "previous": b.prev_version, "task_assigner": assigner_id,
    }
    if b.prev is not None and b.prev.manifest.get("consolidation"):
        manifest["consolidation"] = b.prev.manifest["consolidation"]
    data = VersionData(manifest, chunks, chunk_vecs, nodes, name_vecs, desc_vecs,
                       {s: results[s].raw_nodes for s in order})
    t = time.perf_counter()
    with b.store.new_version() as (version, folder):
        manifest["version"] = version
        b.timings["total"] = time.perf_counter() - t0
        stats["seconds"] = {k: round(v, 3) for k, v in b.timings.items()}
        write_version(folder, data)
    stats["seconds"]["write"] = round(time.perf_counter() - t, 3)
    stats["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    log.info("knowledge base %s: %s (%d docs, %d chunks, %d nodes, %d links; %d processed)", b.store.root,
             version, stats["documents"], stats["chunks"], stats["nodes"], stats["links"], stats["processed"])
    return BuildReport(version, b.store.root, True, stats)


def task_counts(tasks: dict[str, dict]) -> dict[str, int]:
    """Documents per task (documents filed under no task count under "")."""
    out: dict[str, int] = {}
    for entry in tasks.values():
        for t in entry.get("tasks") or [""]:
            out[t] = out.get(t, 0) + 1
    return dict(sorted(out.items()))


def _up_to_date(store: KnowledgeStore, doc_dirs: list[str], chunk_chars: int, llm_available: bool,
                assigner_id: str | None) -> bool:
    version = store.current_version()
    if version is None:
        return False
    manifest = store.manifest(version)
    if manifest.get("task_assigner") != assigner_id:
        return False
    scan = load_documents(doc_dirs)
    planned = {d.source: doc_key(d, chunk_chars, planned_method(d, llm_available)) for d in scan.documents}
    built = {s: e["key"] for s, e in manifest["docs"].items()}
    return planned == built


def ensure_knowledge_base(cfg, llm_factory: Callable[[], Engine] | None = None, *, embedder=None,
                          progress: bool = False, assign_tasks: TaskAssigner | None = None) -> Path:
    """The base for `cfg` (a KnowledgeConfig), built or updated first when its documents changed.

    Without an LLM factory unstructured documents use the heuristic extractor; with one, the LLM is
    only loaded if some document actually needs it.
    """
    if not cfg.docs:
        raise KnowledgeError("knowledge.docs lists no document folders")
    directory = Path(cfg.directory).expanduser() if cfg.directory else default_directory(cfg.docs)
    store = KnowledgeStore(directory)
    if _up_to_date(store, list(cfg.docs), cfg.chunk_chars, llm_factory is not None,
                   getattr(assign_tasks, "fingerprint", None)):
        return directory
    llm = LazyEngine(llm_factory) if llm_factory is not None else None
    run_build(list(cfg.docs), directory, llm=llm, embedder=embedder, chunk_chars=cfg.chunk_chars,
              progress=progress, mode="sync", assign_tasks=assign_tasks)
    return directory
