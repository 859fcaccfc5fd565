"""Operation documents on disk: Markdown and text files, tagged by the folder they sit in."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from experts.knowledge.markdown import first_heading, front_matter, humanize

DOC_SUFFIXES = (".md", ".markdown", ".txt")


class KnowledgeError(ValueError):
    """A user-facing knowledge-base problem: missing folder, no documents, no built version."""


@dataclass
class Document:
    source: str  # path relative to its document folder (posix), the document's id in the base
    path: Path  # absolute path on disk
    root: Path  # the document folder it was found under
    text: str  # full file text (offsets of chunks refer to it)
    body_start: int  # offset after the front matter
    title: str
    tags: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:20]

    @property
    def is_markdown(self) -> bool:
        return self.path.suffix.lower() in (".md", ".markdown")

    @property
    def body(self) -> str:
        return self.text[self.body_start:]


def read_document(path: Path, root: Path, source: str | None = None) -> Document:
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    rel = path.relative_to(root)
    meta, body_start = front_matter(text) if path.suffix.lower() != ".txt" else ({}, 0)
    title = first_heading(text, body_start) if path.suffix.lower() != ".txt" else None
    fm_title = str(meta.get("title") or "").strip()
    if not title:
        title = fm_title or humanize(path.stem)
    elif fm_title and _key(fm_title) == _key(path.stem) != _key(title):
        # The heading disagrees with both the front matter and the file name, which agree with each
        # other: a copy-paste slip (PrometheusRemoteWriteBehind.md is headed PrometheusRemoteStorageFailures).
        title = path.stem
    # The folder a document sits in is its tag (starter/docs/<task>/<doc>.md -> <task>).
    tags = [rel.parent.name] if rel.parent != Path(".") else []
    extra = meta.get("tags")
    if isinstance(extra, str):
        extra = [extra]
    if isinstance(extra, list):
        tags += [str(t) for t in extra if str(t) not in tags]
    return Document(source=source or rel.as_posix(), path=path, root=root, text=text, body_start=body_start,
                    title=title, tags=tags, meta=meta)


def _key(text: str) -> str:
    return "".join(ch for ch in humanize(text).lower() if ch.isalnum())


@dataclass
class Scan:
    documents: list[Document]
    skipped: list[str]  # files without any content after their front matter (e.g. Hugo _index.md)


def load_documents(doc_dirs: list[str | Path], suffixes: tuple[str, ...] = DOC_SUFFIXES) -> Scan:
    """Every .md/.markdown/.txt file under the folders (a single file may be given too), sorted.

    Sources are paths relative to their folder; when two folders hold the same relative path the
    later one is prefixed with its folder name so ids stay unique.
    """
    if not doc_dirs:
        raise KnowledgeError("no document folders given")
    docs: list[Document] = []
    skipped: list[str] = []
    used: dict[str, Path] = {}
    for d in doc_dirs:
        root = Path(d).expanduser().resolve()
        if not root.exists():
            raise KnowledgeError(f"document folder not found: {d}")
        if root.is_file():
            files, root = [root], root.parent
        else:
            files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                           and not any(part.startswith(".") for part in p.relative_to(root).parts))
        for path in files:
            rel = path.relative_to(root).as_posix()
            source = rel if rel not in used or used[rel] == root else f"{root.name}/{rel}"
            doc = read_document(path, root, source)
            if not doc.body.strip():
                skipped.append(source)
                continue
            used[source] = root
            docs.append(doc)
    return Scan(docs, skipped)
