"""Labeled example queries and hybrid retrieval over them (sentence embeddings + faiss, and character n-grams)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.embeddings import DenseIndex, Embedder, LexicalIndex, Role
from core.schemas import LabeledQuery

# Tickets are compared with labeled tickets (symmetric similarity), so an embedder with query/passage
# prefixes (e5) encodes both sides as queries, as e5 recommends for symmetric tasks; chosen on the dev splits
# against passage-encoded examples (docs/benchmarks.md).
EXAMPLE_ROLE: Role = "query"


@dataclass
class TaskInfo:
    name: str
    description: str = ""


@dataclass
class Neighbour:
    id: str
    task: str
    text: str
    similarity: float  # fused: (1-w) * dense cosine + w * lexical cosine
    dense: float
    lexical: float

    def brief(self) -> dict:
        return {"id": self.id, "task": self.task, "similarity": round(self.similarity, 4)}


def load_examples(paths: list[str | Path]) -> list[LabeledQuery]:
    """Labeled queries from JSONL ({id?, text, task}) or CSV (text, task columns) files."""
    out: list[LabeledQuery] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"labeled examples not found: {p}")
        if p.suffix == ".jsonl":
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                out.append(LabeledQuery(id=str(row.get("id") or f"{p.stem}-{n}"), text=row["text"],
                                        task=row["task"], source=row.get("source") or p.stem))
        elif p.suffix == ".csv":
            with p.open(newline="", encoding="utf-8") as fh:
                for n, row in enumerate(csv.DictReader(fh), 1):
                    out.append(LabeledQuery(id=str(row.get("id") or f"{p.stem}-{n}"), text=row["text"],
                                            task=row["task"], source=p.stem))
        else:
            raise ValueError(f"{p}: labeled examples must be .jsonl or .csv")
    ids = [q.id for q in out]
    if len(set(ids)) != len(ids):
        raise ValueError("labeled example ids are not unique")
    return out


class ExampleIndex:
    """Top-k labeled neighbours of a ticket, fusing dense and lexical similarity.

    MiniLM is English-centric; character n-grams keep Chinese tickets, error codes and host
    names retrievable. Candidates from either index are re-scored on both and fused. Tickets are
    encoded in the query role, the examples in `example_role`.
    """

    def __init__(self, examples: list[LabeledQuery], embedder: Embedder, lexical_weight: float = 0.5,
                 vectors: np.ndarray | None = None, example_role: Role = EXAMPLE_ROLE):
        if not examples:
            raise ValueError("the classifier needs at least one labeled example")
        self.examples = examples
        self.embedder = embedder
        self.w = lexical_weight
        self.example_role = example_role
        self.vectors = vectors if vectors is not None else \
            embedder.encode([e.text for e in examples], role=example_role)
        self.dense = DenseIndex(self.vectors)
        self.lexical = LexicalIndex([e.text for e in examples])

    def encode(self, texts: list[str]) -> np.ndarray:
        """The tickets' vectors (query role)."""
        return self.embedder.encode(texts, role="query")

    def search(self, texts: list[str], k: int, q: np.ndarray | None = None) -> list[list[Neighbour]]:
        """Top-k fused neighbours per text; `q` passes the texts' vectors (`encode`) when already encoded."""
        q = self.encode(texts) if q is None else q
        pool = min(len(self.examples), max(2 * k, k + 8))
        _, d_idx = self.dense.search(q, pool)
        _, l_idx = self.lexical.search(texts, pool)
        lex_q = self.lexical.vectorizer.transform(texts)
        results = []
        for i in range(len(texts)):
            cand = np.unique(np.concatenate([d_idx[i], l_idx[i]]))
            dense = self.vectors[cand] @ q[i]
            lex = (self.lexical.matrix[cand] @ lex_q[i].T).toarray().ravel()
            fused = (1 - self.w) * dense + self.w * lex
            order = np.argsort(-fused)[:k]
            results.append([
                Neighbour(id=self.examples[c].id, task=self.examples[c].task, text=self.examples[c].text,
                          similarity=float(fused[j]), dense=float(dense[j]), lexical=float(lex[j]))
                for j, c in ((j, cand[j]) for j in order)
            ])
        return results


def load_tasks(path: str | Path) -> list[TaskInfo]:
    """Task list from a task-set YAML: `tasks: [{name, description}, ...]`."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    items = raw.get("tasks") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty `tasks:` list")
    tasks = [TaskInfo(name=str(t["name"]), description=str(t.get("description", "")).strip()) for t in items]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: task names are not unique")
    if "unknown" in names:
        raise ValueError(f"{path}: 'unknown' is reserved for tickets outside every task")
    return tasks
