"""The incident graph (FlowXpert Module 1, steps 3 and 4): merge incident mentions into incident nodes, link them.

Step 3 - merge and refine. Raw nodes of the same incident (several chunks of one document, or
several documents) are grouped when their normalised names are equal, or when their name
embeddings are close: 0.75 cosine inside one document, 0.88 across documents. The documents' own
(title) incidents never merge across documents by similarity alone (NodeFilesystemSpaceFillingUp
and NodeFilesystemAlmostOutOfSpace, NodeRAIDDegraded and NodeRAIDDiskFailure are different
alerts), only by an equal normalised name. A group is refined
into one node: the best member's name, descriptions joined, steps unioned in order with near
duplicates dropped, sources and tags unioned.

Step 4 - link. Incidents are related when a document points at another (`See also: a/b.md`,
Markdown or Hugo links), when one names the other (`NodeRAIDDegraded` in the text of
NodeRAIDDiskFailure), or when they share components: IDF-weighted keyword cosine over name and
description words, averaged with the cosine of their description embeddings (top 3 per node).

Both steps run incrementally: groups untouched by a build keep their node as it was.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from experts.knowledge.incident import IncidentMention, IncidentNode
from experts.knowledge.markdown import humanize, whole_sentences
from experts.knowledge.workflows import reference_workflow

SAME_DOC_THRESHOLD = 0.75
CROSS_DOC_THRESHOLD = 0.88
MAX_RELATED = 6
KEYWORD_LINK_MIN = 0.25  # keyword cosine alone
COMBINED_LINK_MIN = 0.42  # mean of keyword cosine and description-embedding cosine
MIN_SHARED_KEYWORDS = 0.05
KEYWORD_LINKS_PER_NODE = 3


# ---- names -----------------------------------------------------------------------------------------
def _singular(w: str) -> str:
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def normalize_incident(name: str) -> str:
    """Key of an incident name: camel case split, lower case, punctuation dropped, naive singulars."""
    words = re.findall(r"[a-z0-9]+", humanize(name).lower())
    return " ".join(_singular(w) for w in words)


def node_id(key: str, taken: set[str]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", key).strip("-")[:48] or "incident"
    nid = f"n-{slug}"
    if nid in taken:
        nid = f"n-{slug}-{hashlib.sha1(key.encode()).hexdigest()[:6]}"
    k = 2
    base = nid
    while nid in taken:
        nid = f"{base}-{k}"
        k += 1
    return nid


# ---- step 3: merge ---------------------------------------------------------------------------------
@dataclass
class Group:
    id: str
    key: str
    vector: np.ndarray  # embedding of the group's (first member's) humanised name
    members: list[IncidentMention] = field(default_factory=list)

    @property
    def docs(self) -> set[str]:
        return {m.source for m in self.members}


def _member_rank(m: IncidentMention) -> tuple:
    return ({"runbook": 0, "llm": 1, "heuristic": 2}.get(m.method, 3), not m.primary, m.source, m.order)


class Merger:
    """Assigns mentions to incident groups (normalised name, then embedding similarity)."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], same_doc: float = SAME_DOC_THRESHOLD,
                 cross_doc: float = CROSS_DOC_THRESHOLD):
        self.embed = embed
        self.same_doc = same_doc
        self.cross_doc = cross_doc

    def assign(self, groups: list[Group], raw: list[IncidentMention], taken_ids: set[str]) -> set[str]:
        """Add mentions to `groups` (in place); returns the ids of groups that changed."""
        if not raw:
            return set()
        raw = sorted(raw, key=_member_rank)
        vecs = self.embed([humanize(r.incident) for r in raw])
        by_key = {g.key: g for g in groups}
        touched: set[str] = set()
        for r, v in zip(raw, vecs):
            key = normalize_incident(r.incident) or "incident"
            g = by_key.get(key)
            if g is None:
                g = self._similar(groups, r, v)
            if g is None:
                g = Group(node_id(key, taken_ids), key, v)
                taken_ids.add(g.id)
                groups.append(g)
                by_key[key] = g
            g.members.append(r)
            touched.add(g.id)
        return touched

    def _similar(self, groups: list[Group], r: IncidentMention, v: np.ndarray) -> Group | None:
        best, best_sim = None, -1.0
        for g in groups:
            same_doc = r.source in g.docs
            if not same_doc and (r.primary or r.method == "runbook") and any(
                    m.primary or m.method == "runbook" for m in g.members):
                continue  # two documents' own incidents are distinct unless their names are equal
            sim = float(np.dot(g.vector, v))
            if sim >= (self.same_doc if same_doc else self.cross_doc) and sim > best_sim:
                best, best_sim = g, sim
        return best


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _near_duplicate(a: str, b: str) -> bool:
    ta, tb = _tokens(a), _tokens(b)
    if not ta or not tb:
        return a.strip().lower() == b.strip().lower()
    inter = len(ta & tb)
    return inter / len(ta | tb) >= 0.8 or (inter == min(len(ta), len(tb)) and min(len(ta), len(tb)) >= 4)


def _union(lists: list[list[str]]) -> list[str]:
    out: list[str] = []
    for lst in lists:
        for item in lst:
            if item and not any(_near_duplicate(item, o) for o in out):
                out.append(item)
    return out


def _cap(text: str, limit: int) -> str:
    return whole_sentences(re.sub(r"\s+", " ", text).strip(), limit)


def refine(group: Group) -> IncidentNode:
    """One incident node from a group's mentions (no LLM rewriting: fields are merged, in order)."""
    ms = sorted(group.members, key=_member_rank)
    head = ms[0]
    aliases: list[str] = []
    for m in ms[1:]:
        if normalize_incident(m.incident) != normalize_incident(head.incident) and m.incident not in aliases:
            aliases.append(m.incident)
    desc = ""
    for m in ms:
        d = m.failure_description.strip()
        if d and d.lower() not in desc.lower():
            desc = f"{desc} {d}".strip()
    notes = ""
    for m in ms:
        n = m.notes.strip()
        if n and n.lower() not in notes.lower():
            notes = f"{notes} {n}".strip()
    sources: list[str] = []
    for m in ms:
        if m.source not in sources:
            sources.append(m.source)
    for m in ms:
        sources += [c for c in m.chunk_ids if c not in sources]
    refs: list[str] = []
    for m in ms:
        refs += [r for r in m.references if r not in refs]
    diagnosis = _union([m.diagnosis_steps for m in ms])
    mitigation = _union([m.mitigation_steps for m in ms])
    workflow = reference_workflow(diagnosis, mitigation, desc, source=group.id)
    return IncidentNode(
        id=group.id, key=group.key, incident=head.incident, failure_description=_cap(desc, 1500),
        diagnosis_steps=diagnosis, mitigation_steps=mitigation,
        workflow=[s.model_dump(mode="json", exclude_none=True) for s in workflow.steps] if workflow else [],
        typical_cases=_union([m.typical_cases for m in ms]), notes=_cap(notes, 1000), sources=sources,
        tags=sorted({t for m in ms for t in m.tags}), aliases=aliases, members=[m.ref for m in ms],
        references=refs,
    )


# ---- step 4: links ---------------------------------------------------------------------------------
_LINK_STOP = {
    "the", "a", "an", "of", "in", "on", "for", "to", "and", "or", "with", "by", "at", "from", "is", "are", "was",
    "be", "been", "this", "that", "these", "those", "it", "its", "as", "into", "when", "which", "if", "can",
    "may", "not", "no", "than", "more", "less", "too", "very", "there", "their", "any", "all", "some", "has",
    "have", "had", "will", "would", "should", "could", "does", "do", "such", "other", "one", "two", "also",
    "alert", "alerts", "fires", "fire", "firing", "impact", "means", "meaning", "mean", "time", "certain",
    "number", "based", "being", "might", "about", "over", "under", "up", "out", "but", "because", "then",
    "they", "them", "you", "your", "we", "our", "i", "e", "g", "s", "etc", "example", "case", "cases",
    "high", "low", "many", "much", "most", "within", "last", "minutes", "minute", "hours",
}


def _keywords(node: IncidentNode) -> Counter:
    c: Counter = Counter()
    for w in re.findall(r"[a-z][a-z0-9]+", humanize(node.incident).lower()):
        if w not in _LINK_STOP and len(w) > 2:
            c[_singular(w)] += 2
    for w in re.findall(r"[a-z][a-z0-9]+", node.failure_description.lower()[:600]):
        if w not in _LINK_STOP and len(w) > 2:
            c[_singular(w)] += 1
    return c


def _keyword_similarity(nodes: list[IncidentNode]) -> np.ndarray:
    bags = [_keywords(n) for n in nodes]
    df: Counter = Counter()
    for b in bags:
        df.update(b.keys())
    n = len(nodes)
    vocab = {w: i for i, w in enumerate(sorted(df))}
    mat = np.zeros((n, len(vocab)), dtype=np.float32)
    for r, b in enumerate(bags):
        for w, tf in b.items():
            if df[w] > max(2, 0.3 * n):  # too common to name a shared component
                continue
            mat[r, vocab[w]] = (1 + math.log(tf)) * math.log(1 + n / df[w])
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    mat = mat / np.maximum(norms, 1e-9)
    sim = mat @ mat.T
    np.fill_diagonal(sim, 0.0)
    return sim


def _resolve_reference(ref: str, from_doc: str, docs: set[str], by_name: dict[str, list[str]]) -> str | None:
    ref = ref.split("#", 1)[0].strip()
    if not ref:
        return None
    base = posixpath.dirname(from_doc)
    for cand in (posixpath.normpath(posixpath.join(base, ref)), posixpath.normpath(ref.lstrip("/"))):
        if cand in docs:
            return cand
    # Hugo-style refs drop the extension; `See also: disk-full.md` may omit folders.
    stem = re.sub(r"\.(md|markdown|txt)$", "", posixpath.basename(ref)).lower()
    hits = by_name.get(stem, [])
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:  # prefer the one closest to the referring document
        same = [h for h in hits if posixpath.dirname(h) == base]
        return same[0] if len(same) == 1 else None
    return None


def compute_links(nodes: list[IncidentNode], fresh: set[str] | None = None,
                  previous: dict[str, list[str]] | None = None,
                  vectors: np.ndarray | None = None) -> dict[str, list[str]]:
    """`related` lists for every node (symmetric, explicit links first, at most MAX_RELATED).

    Shared components are scored by IDF-weighted keyword cosine; with `vectors` (normalised
    "name: description" embeddings, row i = nodes[i]) the score averages keyword and embedding
    similarity, and a pair must still share some rare keyword.

    With `fresh` (ids of new or changed nodes) and `previous` (their old `related`), links between
    two unchanged nodes are kept as they were and only links touching a fresh node are computed.
    """
    ids = [n.id for n in nodes]
    index = {nid: i for i, nid in enumerate(ids)}
    docs = {d for n in nodes for d in n.docs}
    by_name: dict[str, list[str]] = {}
    for d in sorted(docs):
        by_name.setdefault(re.sub(r"\.(md|markdown|txt)$", "", posixpath.basename(d)).lower(), []).append(d)
    doc_nodes: dict[str, list[str]] = {}
    for n in nodes:
        for d in n.docs:
            doc_nodes.setdefault(d, []).append(n.id)
    scores: dict[tuple[str, str], float] = {}

    def add(a: str, b: str, score: float):
        if a == b:
            return
        key = (a, b) if a < b else (b, a)
        scores[key] = max(scores.get(key, 0.0), score)

    # explicit references between documents (score 3) and mentions of another incident's name (2)
    for n in nodes:
        for ref in n.references:
            target = _resolve_reference(ref, n.docs[0] if n.docs else "", docs, by_name)
            if target and target not in n.docs:
                for other in doc_nodes.get(target, []):
                    add(n.id, other, 3.0)
    names = [(n.id, n.incident, normalize_incident(n.incident)) for n in nodes]
    for n in nodes:
        text = n.all_text()
        norm_text = " " + normalize_incident(text) + " "
        for oid, name, key in names:
            if oid == n.id:
                continue
            camel = re.fullmatch(r"[A-Za-z][a-z0-9]*(?:[A-Z][A-Za-z0-9]*)+", name) and len(name) >= 8
            if camel and re.search(rf"\b{re.escape(name)}\b", text):
                add(n.id, oid, 2.0)
            elif len(key.split()) >= 2 and len(key) >= 10 and f" {key} " in norm_text:
                add(n.id, oid, 2.0)
    # shared components: each node's best keyword neighbours
    if len(nodes) > 1:
        kw = _keyword_similarity(nodes)
        if vectors is not None and len(vectors) == len(nodes):
            emb = np.asarray(vectors, np.float32) @ np.asarray(vectors, np.float32).T
            np.fill_diagonal(emb, 0.0)
            sim = np.where(kw >= MIN_SHARED_KEYWORDS, 0.5 * kw + 0.5 * emb, 0.0)
            threshold = COMBINED_LINK_MIN
        else:
            sim, threshold = kw, KEYWORD_LINK_MIN
        for i, nid in enumerate(ids):
            order = np.argsort(-sim[i])[:KEYWORD_LINKS_PER_NODE]
            for j in order:
                if sim[i, j] >= threshold:
                    add(nid, ids[int(j)], float(sim[i, j]))
    fresh = set(ids) if fresh is None else fresh
    previous = previous or {}
    related: dict[str, list[tuple[float, str]]] = {nid: [] for nid in ids}
    for (a, b), s in scores.items():
        if a in fresh or b in fresh:
            related[a].append((s, b))
            related[b].append((s, a))
    for nid in ids:
        if nid in fresh:
            continue
        for other in previous.get(nid, []):
            if other in index and other not in fresh:
                related[nid].append((10.0 - len(related[nid]) * 1e-3, other))  # keep old order first
    out: dict[str, list[str]] = {}
    for nid in ids:
        seen: list[str] = []
        for _score, other in sorted(related[nid], key=lambda t: (-t[0], t[1])):
            if other not in seen:
                seen.append(other)
        out[nid] = seen[:MAX_RELATED] if nid in fresh else seen[: max(MAX_RELATED, len(previous.get(nid, [])))
                                                                 + MAX_RELATED]
    # keep the relation symmetric after capping
    for nid, rel in out.items():
        for other in rel:
            if nid not in out[other]:
                out[other].append(nid)
    return out
