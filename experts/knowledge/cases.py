"""Case memory: tickets an operator accepted or corrected, retrieved for similar tickets (Bian Que's case records).

A case is one past ticket with its final workflow (the accepted candidate, or the operator's correction),
the knowledge that answer was grounded in, the expert, and the feedback. The ingress writes cases when
feedback arrives; every Planner replica reads them. They share one SQLite file (WAL) under the service's
state folder, so a case survives replica kills and restarts, and a revision counter in the same file tells
a replica in one indexed read whether anything changed since its last request: the index updates without
a restart. Vectors are computed once by the first replica that sees a case and written back beside it.

Similarity of a ticket to a case is MiniLM cosine of the two ticket texts mixed with BM25 over the case
texts (`experts.knowledge.lexical`, normalised by the query's own bound), the same mix incident nodes use;
an edited case gets a small bonus over an accepted one, since an operator's correction is the stronger
signal.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from core.embeddings import DenseIndex
from core.schemas import KnowledgeItem
from core.workflow import Workflow
from experts.knowledge.lexical import BM25

CASES_FILE = "cases.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id TEXT NOT NULL UNIQUE,
    verdict TEXT NOT NULL CHECK (verdict IN ('accept', 'edit')),
    body TEXT NOT NULL,
    vector BLOB,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);
"""


class Case(BaseModel):
    """One past ticket and what the operator made of its answer."""

    ticket_id: str
    text: str = Field(description="The ticket's text (title and description).")
    verdict: Literal["accept", "edit"]
    workflow: Workflow = Field(description="The final workflow: the accepted candidate or the correction.")
    original: Workflow | None = Field(default=None, description="edit: the candidate the operator corrected.")
    knowledge: list[KnowledgeItem] = Field(default_factory=list, description="What the answer was grounded in.")
    expert: str | None = None
    comment: str | None = None
    outcome: dict | None = Field(default=None, description="resolved / not_resolved and the resolving step id.")
    principal: str | None = Field(default=None, description="API key id that sent the feedback.")
    feedback_id: int | None = None
    created: float = Field(default_factory=time.time)

    @property
    def title(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def id(self) -> str:
        return f"case:{self.ticket_id}"


class CaseStore:
    """The durable case table; safe to share between processes (one connection per thread)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / CASES_FILE
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                conn.execute(sql, args)
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def put(self, case: Case) -> None:
        """Record `case`, replacing an earlier case of the same ticket (the latest feedback wins)."""
        self._write([("DELETE FROM cases WHERE ticket_id = ?", (case.ticket_id,)),
                     ("INSERT INTO cases (ticket_id, verdict, body, created) VALUES (?,?,?,?)",
                      (case.ticket_id, case.verdict, case.model_dump_json(), case.created))])

    def remove(self, ticket_id: str) -> bool:
        """Forget a ticket's case (it was rejected after all); False when it had none."""
        if self._conn().execute("SELECT 1 FROM cases WHERE ticket_id = ?", (ticket_id,)).fetchone() is None:
            return False
        self._write([("DELETE FROM cases WHERE ticket_id = ?", (ticket_id,))])
        return True

    def revision(self) -> int:
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        return int(row[0]) if row else 0

    def get(self, ticket_id: str) -> Case | None:
        row = self._conn().execute("SELECT body FROM cases WHERE ticket_id = ?", (ticket_id,)).fetchone()
        return Case.model_validate_json(row["body"]) if row else None

    def rows(self) -> list[tuple[int, Case, np.ndarray | None]]:
        """(seq, case, stored vector or None) of every case, oldest first."""
        out = []
        for r in self._conn().execute("SELECT seq, body, vector FROM cases ORDER BY seq").fetchall():
            vec = np.frombuffer(r["vector"], dtype=np.float32).copy() if r["vector"] else None
            out.append((int(r["seq"]), Case.model_validate_json(r["body"]), vec))
        return out

    def set_vectors(self, vectors: dict[int, np.ndarray]) -> None:
        """Store computed vectors beside their cases (does not change the revision: the cases are the same)."""
        if vectors:
            self._conn().executemany("UPDATE cases SET vector = ? WHERE seq = ?",
                                     [(np.asarray(v, np.float32).tobytes(), seq) for seq, v in vectors.items()])

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM cases").fetchone()[0])


@dataclass
class CaseHit:
    case: Case
    similarity: float


@dataclass
class _Snapshot:
    revision: int
    cases: list[Case]
    dense: DenseIndex | None
    lexical: BM25 | None


Embed = Callable[[list[str]], np.ndarray]


class CaseIndex:
    """Dense + lexical index over the case store, refreshed in place when the store's revision moves."""

    def __init__(self, store: CaseStore, embed: Embed, lexical_weight: float = 0.3, edit_bonus: float = 0.05):
        self.store = store
        self.embed = embed
        self.lexical_weight = lexical_weight
        self.edit_bonus = edit_bonus
        self._snap = _Snapshot(revision=-1, cases=[], dense=None, lexical=None)
        self._lock = threading.Lock()

    @property
    def revision(self) -> int:
        return self._snap.revision

    def __len__(self) -> int:
        return len(self._snap.cases)

    def refresh(self) -> bool:
        """Reload when the store changed (one indexed read when it did not); True when it reloaded."""
        revision = self.store.revision()
        if revision == self._snap.revision:
            return False
        with self._lock:
            revision = self.store.revision()
            if revision == self._snap.revision:
                return False
            rows = self.store.rows()
            cases = [c for _, c, _ in rows]
            vectors: list[np.ndarray | None] = [v for _, _, v in rows]
            missing = [i for i, v in enumerate(vectors) if v is None]
            if missing:
                fresh = self.embed([cases[i].text for i in missing])
                for i, v in zip(missing, fresh):
                    vectors[i] = v
                self.store.set_vectors({rows[i][0]: vectors[i] for i in missing})
            dim = len(vectors[0]) if vectors else 0
            if any(len(v) != dim for v in vectors):  # vectors of another embedder: recompute them all
                vectors = list(self.embed([c.text for c in cases]))
                self.store.set_vectors({seq: v for (seq, _, _), v in zip(rows, vectors)})
            dense = DenseIndex(np.stack(vectors).astype(np.float32)) if vectors else None
            lexical = BM25([c.text for c in cases]) if cases else None
            self._snap = _Snapshot(revision=revision, cases=cases, dense=dense, lexical=lexical)
            return True

    def similarities(self, query: str, vec: np.ndarray) -> np.ndarray:
        """Every case's similarity to the ticket `query` (its vector `vec`), in store order."""
        snap = self._snap
        if not snap.cases or snap.dense is None:
            return np.zeros(0, np.float32)
        scores, ids = snap.dense.search(np.ascontiguousarray(vec[None, :], np.float32), len(snap.cases))
        dense = np.zeros(len(snap.cases), np.float32)
        dense[ids[0]] = scores[0]
        sim = (1 - self.lexical_weight) * dense + self.lexical_weight * snap.lexical.scores(query)
        bonus = np.array([self.edit_bonus if c.verdict == "edit" else 0.0 for c in snap.cases], np.float32)
        return sim + bonus

    def search(self, query: str, vec: np.ndarray, k: int, min_similarity: float = 0.0,
               exclude: frozenset[str] = frozenset()) -> list[CaseHit]:
        """The `k` most similar cases at or above `min_similarity`, best first."""
        snap = self._snap
        if k <= 0 or not snap.cases:
            return []
        sim = self.similarities(query, vec)
        order = np.argsort(-sim, kind="stable")
        hits = [CaseHit(snap.cases[i], round(float(sim[i]), 4)) for i in order
                if sim[i] >= min_similarity and snap.cases[i].ticket_id not in exclude]
        return hits[:k]

