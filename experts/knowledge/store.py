"""The on-disk knowledge base: immutable version folders and an atomically replaced `current` pointer.

    <directory>/
        current                 text file naming the live version ("v0003"), replaced atomically
        v0003/
            manifest.json       documents (path -> content hash, extraction key, method), stats, config
            chunks.parquet      chunk metadata and text, row i = vector i of chunks.faiss
            chunks.faiss        MiniLM vectors (inner product = cosine)
            nodes.parquet       incident nodes
            nodes_name.npy      embeddings of incident names
            nodes_desc.npy      embeddings of "name: failure description"
            raw_nodes.json      per-document extraction results (what incremental merges start from)
        cache/docs/<key>.*      per-document results of unfinished or past builds (resumability)

A build writes `.building-<pid>` and renames it to the next version, then flips `current`; a
build that fails leaves the previous version current and removes its partial folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.embeddings import DenseIndex
from experts.knowledge.chunking import Chunk
from experts.knowledge.documents import KnowledgeError
from experts.knowledge.incident import IncidentMention, IncidentNode

FORMAT = 2
POINTER = "current"
_VERSION_RE = re.compile(r"^v(\d{4,})$")


@dataclass
class VersionData:
    manifest: dict
    chunks: list[Chunk] = field(default_factory=list)
    chunk_vectors: np.ndarray | None = None
    nodes: list[IncidentNode] = field(default_factory=list)
    name_vectors: np.ndarray | None = None
    desc_vectors: np.ndarray | None = None
    raw_nodes: dict[str, list[IncidentMention]] = field(default_factory=dict)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class KnowledgeStore:
    """Versions of one knowledge base in `directory`."""

    def __init__(self, directory: str | Path):
        self.root = Path(directory).expanduser()

    # ---- versions ---------------------------------------------------------------------------
    @property
    def pointer(self) -> Path:
        return self.root / POINTER

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted((p.name for p in self.root.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)),
                      key=lambda v: int(v[1:]))

    def current_version(self) -> str | None:
        try:
            v = self.pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return v if _VERSION_RE.match(v) and (self.root / v / "manifest.json").exists() else None

    def pointer_stamp(self) -> tuple | None:
        """Cheap change detector for the pointer (inode changes on every atomic replace)."""
        try:
            st = self.pointer.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def version_dir(self, version: str) -> Path:
        return self.root / version

    def _next_version(self) -> str:
        nums = [int(v[1:]) for v in self.versions()]
        return f"v{(max(nums) + 1) if nums else 1:04d}"

    def set_current(self, version: str) -> None:
        if not (self.root / version / "manifest.json").exists():
            raise KnowledgeError(f"{self.root}: version {version} does not exist")
        write_atomic(self.pointer, version + "\n")

    @contextmanager
    def lock(self):
        """One builder at a time per base (replicas starting together, a CLI build beside a server)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / ".lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    @contextmanager
    def new_version(self):
        """Yield (version, folder to fill); on success the folder becomes `version` and current."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".building-*"):
            try:
                pid = int(stale.name.rsplit("-", 1)[1])
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError):
                shutil.rmtree(stale, ignore_errors=True)
            except PermissionError:
                pass
        tmp = self.root / f".building-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        version = self._next_version()
        try:
            yield version, tmp
            final = self.root / version
            os.rename(tmp, final)
            _fsync_dir(self.root)
            self.set_current(version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def prune(self, keep: int = 3) -> list[str]:
        """Delete all but the newest `keep` versions (never the current one)."""
        cur = self.current_version()
        vs = self.versions()
        old = [v for v in vs[:-keep] if v != cur] if keep > 0 else [v for v in vs if v != cur]
        for v in old:
            shutil.rmtree(self.root / v, ignore_errors=True)
        return old

    # ---- reading and writing ------------------------------------------------------------------
    def manifest(self, version: str | None = None) -> dict:
        version = version or self.current_version()
        if version is None:
            raise KnowledgeError(f"no knowledge base built in {self.root}")
        return json.loads((self.root / version / "manifest.json").read_text(encoding="utf-8"))

    def read(self, version: str | None = None, raw: bool = True) -> VersionData:
        version = version or self.current_version()
        if version is None:
            raise KnowledgeError(f"no knowledge base built in {self.root} (run `flowrouter kb build`)")
        return read_version(self.root / version, raw=raw)


CHUNK_COLUMNS = ("id", "source", "heading_path", "start", "end", "text", "tags")
NODE_COLUMNS = ("id", "key", "incident", "failure_description", "diagnosis_steps", "mitigation_steps",
                "typical_cases", "notes", "sources", "tags", "related", "aliases", "members", "references")
JSON_NODE_COLUMNS = ("workflow",)


def _chunk_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("source", pa.string()), ("heading_path", pa.list_(pa.string())),
                      ("start", pa.int64()), ("end", pa.int64()), ("text", pa.string()),
                      ("tags", pa.list_(pa.string()))])


def _node_schema():
    import pyarrow as pa

    lst = pa.list_(pa.string())
    return pa.schema([("id", pa.string()), ("key", pa.string()), ("incident", pa.string()),
                      ("failure_description", pa.string()), ("diagnosis_steps", lst), ("mitigation_steps", lst),
                      ("typical_cases", lst), ("notes", pa.string()), ("sources", lst), ("tags", lst),
                      ("related", lst), ("aliases", lst), ("members", lst), ("references", lst),
                      ("workflow", pa.string())])


def write_version(folder: Path, data: VersionData) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = int(data.manifest.get("dim") or 384)
    rows = [{k: getattr(c, k) for k in CHUNK_COLUMNS} for c in data.chunks]
    pq.write_table(pa.Table.from_pylist(rows, schema=_chunk_schema()), folder / "chunks.parquet")
    vecs = data.chunk_vectors if data.chunk_vectors is not None else np.zeros((0, dim), np.float32)
    DenseIndex(np.asarray(vecs, dtype=np.float32).reshape(-1, dim)).save(folder / "chunks.faiss")
    nrows = [{**{k: getattr(n, k) for k in NODE_COLUMNS},
              **{k: json.dumps(getattr(n, k), ensure_ascii=False) for k in JSON_NODE_COLUMNS}} for n in data.nodes]
    pq.write_table(pa.Table.from_pylist(nrows, schema=_node_schema()), folder / "nodes.parquet")
    for name, arr in (("nodes_name.npy", data.name_vectors), ("nodes_desc.npy", data.desc_vectors)):
        arr = arr if arr is not None else np.zeros((0, dim), np.float32)
        np.save(folder / name, np.asarray(arr, dtype=np.float32).reshape(-1, dim))
    raw = {src: [r.model_dump() for r in rs] for src, rs in data.raw_nodes.items()}
    (folder / "raw_nodes.json").write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    # the manifest last: a folder with a manifest is complete
    (folder / "manifest.json").write_text(json.dumps(data.manifest, indent=1, ensure_ascii=False), encoding="utf-8")


def read_version(folder: Path, raw: bool = True) -> VersionData:
    import faiss
    import pyarrow.parquet as pq

    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    crows = pq.read_table(folder / "chunks.parquet").to_pylist()
    chunks = [Chunk(**{k: r[k] for k in CHUNK_COLUMNS}) for r in crows]
    index = faiss.read_index(str(folder / "chunks.faiss"))
    vecs = index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d), np.float32)
    nodes = [_node(r) for r in pq.read_table(folder / "nodes.parquet").to_pylist()]
    data = VersionData(manifest=manifest, chunks=chunks, chunk_vectors=np.ascontiguousarray(vecs, np.float32),
                       nodes=nodes, name_vectors=np.load(folder / "nodes_name.npy"),
                       desc_vectors=np.load(folder / "nodes_desc.npy"))
    if raw:
        blob = json.loads((folder / "raw_nodes.json").read_text(encoding="utf-8"))
        data.raw_nodes = {src: [IncidentMention.model_validate(r) for r in rs] for src, rs in blob.items()}
    return data


def _node(row: dict) -> IncidentNode:
    for k in JSON_NODE_COLUMNS:
        row[k] = json.loads(row[k]) if row.get(k) else []
    return IncidentNode.model_validate(row)


# ---- per-document cache (resumable builds) -------------------------------------------------------
class DocCache:
    """Extraction and embedding results per document key (source + content + settings)."""

    def __init__(self, folder: Path):
        self.folder = folder / "docs"

    def load(self, key: str) -> tuple[dict, np.ndarray] | None:
        meta, vec = self.folder / f"{key}.json", self.folder / f"{key}.npy"
        if not (meta.exists() and vec.exists()):
            return None
        try:
            return json.loads(meta.read_text(encoding="utf-8")), np.load(vec)
        except (ValueError, OSError):
            return None

    def save(self, key: str, meta: dict, vectors: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{key}.npy.tmp{os.getpid()}.npy"
        np.save(tmp, np.asarray(vectors, np.float32))
        os.replace(tmp, self.folder / f"{key}.npy")
        write_atomic(self.folder / f"{key}.json", json.dumps(meta, ensure_ascii=False))

    def prune(self, keep: set[str]) -> int:
        if not self.folder.is_dir():
            return 0
        n = 0
        for p in self.folder.iterdir():
            if p.name.split(".", 1)[0] not in keep and not p.name.startswith("."):
                p.unlink(missing_ok=True)
                n += 1
        return n
