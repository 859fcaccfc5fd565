"""Documents to chunks: split on Markdown headings, then by size at paragraph, line and word bounds.

A chunk keeps its document-relative source path, the heading path above it, and its character
offsets in the file, so every retrieved excerpt can be traced back. Chunk ids hash source,
offset and text: unchanged documents keep their chunk ids across builds.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field

from experts.knowledge.documents import Document
from experts.knowledge.markdown import Section, split_sections

DEFAULT_CHUNK_CHARS = 900


@dataclass
class Chunk:
    id: str
    source: str
    heading_path: list[str]
    start: int
    end: int
    text: str
    tags: list[str] = field(default_factory=list)

    def embed_text(self, title: str = "") -> str:
        """Heading path (with the document title when it is not the first heading) plus text."""
        path = list(self.heading_path)
        if title and (not path or path[0] != title):
            path.insert(0, title)
        return (" > ".join(path) + "\n" + self.text) if path else self.text

    def to_dict(self) -> dict:
        return asdict(self)


def chunk_id(source: str, start: int, text: str) -> str:
    return "c-" + hashlib.sha1(f"{source}\x00{start}\x00{text}".encode()).hexdigest()[:16]


def _paragraph_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Blank-line separated spans of text[start:end]; code fences are never split."""
    spans: list[tuple[int, int]] = []
    cur = None
    fence = None
    pos = start
    for line in text[start:end].splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fence = None if fence and stripped.startswith(fence) else (fence or stripped[:3])
        if not stripped and fence is None:
            if cur is not None:
                spans.append((cur, pos))
                cur = None
        elif cur is None:
            cur = pos
        pos += len(line)
    if cur is not None:
        spans.append((cur, end))
    return spans


def _split_long(text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    """A span longer than `limit`: cut at line ends, else sentence ends, else spaces, else hard."""
    out: list[tuple[int, int]] = []
    s = start
    while end - s > limit:
        window = text[s:s + limit]
        cut = -1
        for pattern in (r"\n", r"[.!?;]\s", r"\s"):
            ms = [m.end() for m in re.finditer(pattern, window) if m.end() > limit // 3]
            if ms:
                cut = ms[-1]
                break
        if cut <= 0:
            cut = limit
        out.append((s, s + cut))
        s += cut
    if s < end:
        out.append((s, end))
    return out


def _pack(text: str, spans: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    pieces: list[tuple[int, int]] = []
    for a, b in spans:
        pieces.extend(_split_long(text, a, b, limit) if b - a > limit else [(a, b)])
    packed: list[tuple[int, int]] = []
    for a, b in pieces:
        if packed and b - packed[-1][0] <= limit:
            packed[-1] = (packed[-1][0], b)
        else:
            packed.append((a, b))
    return packed


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def chunk_document(doc: Document, chunk_chars: int = DEFAULT_CHUNK_CHARS) -> list[Chunk]:
    text = doc.text
    if doc.is_markdown:
        sections = split_sections(text, doc.body_start)
    else:
        sections = [Section([], 0, doc.body_start, len(text))]
    chunks: list[Chunk] = []
    for sec in sections:
        a, b = _trim(text, sec.start, sec.end)
        if a >= b:
            continue
        heading_path = sec.heading_path or [doc.title]
        spans = [(a, b)] if b - a <= chunk_chars else _pack(text, _paragraph_spans(text, a, b), chunk_chars)
        for s, e in spans:
            s, e = _trim(text, s, e)
            if s >= e:
                continue
            body = text[s:e]
            if not re.search(r"\w", body):
                continue
            chunks.append(Chunk(id=chunk_id(doc.source, s, body), source=doc.source, heading_path=heading_path,
                                start=s, end=e, text=body, tags=list(doc.tags)))
    return chunks
