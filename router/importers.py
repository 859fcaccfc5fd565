"""Labeled-query importers: files and public data sets -> `list[LabeledQuery]`.

The classifier retrieves over these as examples; the leaderboard uses them as task sets' labeled
queries. Every importer returns items in a stable order with stable ids, so the same file always
gives the same list (and the same task-set version).

- `load_labeled(path)`: generic JSONL / JSON-array / CSV / TSV with `text` and `task` columns.
- `import_it_tickets()`: Kaggle IT Service Ticket Classification (`Document`, `Topic_group`).
- `import_owl_bench()`: OWL-Bench ops MC questions (Chinese) labelled with one of 9 ops domains.
- `split_labeled(items, test_fraction, seed)`: deterministic stratified train/test split.

Public data is read from `core.paths.shared_data_dir()` and never copied into the repository.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path

from core.config import slug
from core.paths import shared_data_dir
from core.schemas import UNKNOWN, LabeledQuery

log = logging.getLogger(__name__)

# Source label -> task name. Task names are slugs so they read well in maps, APIs and file names.
IT_TICKET_TASKS: dict[str, str] = {
    "Hardware": "hardware",
    "HR Support": "hr-support",
    "Access": "access",
    "Miscellaneous": "miscellaneous",
    "Storage": "storage",
    "Purchase": "purchase",
    "Internal Project": "internal-project",
    "Administrative rights": "administrative-rights",
}

OWL_TASKS: dict[str, str] = {
    "操作系统运维": "os",
    "网络运维": "network",
    "中间件运维": "middleware",
    "信息安全运维": "security",
    "应用业务运维": "application",
    "基础设施运维": "infrastructure",
    "软件架构运维": "software-architecture",
    "数据库运维": "database",
    "系统架构运维": "system-architecture",
}

OWL_DESCRIPTIONS: dict[str, str] = {
    "os": "Operating system operations (操作系统运维)",
    "network": "Network operations (网络运维)",
    "middleware": "Middleware operations (中间件运维)",
    "security": "Information security operations (信息安全运维)",
    "application": "Application and business operations (应用业务运维)",
    "infrastructure": "Infrastructure operations (基础设施运维)",
    "software-architecture": "Software architecture operations (软件架构运维)",
    "database": "Database operations (数据库运维)",
    "system-architecture": "System architecture operations (系统架构运维)",
}

csv.field_size_limit(1 << 30)


class LabeledDataError(ValueError):
    """A labeled-query file that cannot be read (missing file or column, duplicate ids, bad row)."""


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line/row number, mapping) for every record of a JSONL, JSON-array, CSV or TSV file."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LabeledDataError(f"{path}:{n}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise LabeledDataError(f"{path}:{n}: expected a JSON object per line")
            out.append((n, row))
        return out
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise LabeledDataError(f"{path}: expected a JSON array of objects")
        return list(enumerate(data, 1))
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            # Row numbers count the header as line 1, like a spreadsheet.
            return [(n, row) for n, row in enumerate(reader, 2)]
    raise LabeledDataError(f"{path}: labeled queries must be .jsonl, .json, .csv or .tsv")


def load_labeled(
    path: str | Path,
    text_col: str = "text",
    task_col: str = "task",
    id_col: str = "id",
    source: str | None = None,
    limit: int | None = None,
) -> list[LabeledQuery]:
    """Labeled queries from one file; ids default to `<file stem>-<row number>`.

    Rows with an empty text or task are skipped (and counted in a log line); a missing column,
    a duplicate id or the reserved task `unknown` raises LabeledDataError naming the row.
    """
    path = Path(path)
    if not path.exists():
        raise LabeledDataError(f"labeled queries not found: {path}")
    rows = read_rows(path)
    if rows:
        first = rows[0][1]
        missing = [c for c in (text_col, task_col) if c not in first]
        if missing:
            raise LabeledDataError(f"{path}: no column(s) {missing}; columns are {sorted(first)}")
    out: list[LabeledQuery] = []
    seen: set[str] = set()
    skipped = 0
    for n, row in rows:
        if text_col not in row or task_col not in row:
            raise LabeledDataError(f"{path}:{n}: missing {text_col!r} or {task_col!r}")
        text = str(row[text_col] or "").strip()
        task = str(row[task_col] or "").strip()
        if not text or not task:
            skipped += 1
            continue
        if task == UNKNOWN:
            raise LabeledDataError(f"{path}:{n}: task {UNKNOWN!r} is reserved for tickets outside every task")
        qid = str(row.get(id_col) or "").strip() or f"{path.stem}-{n}"
        if qid in seen:
            raise LabeledDataError(f"{path}:{n}: duplicate id {qid!r}")
        seen.add(qid)
        out.append(LabeledQuery(id=qid, text=text, task=task, source=row.get("source") or source or path.stem))
        if limit is not None and len(out) >= limit:
            break
    if skipped:
        log.info("%s: skipped %d rows with an empty text or task", path, skipped)
    return out


def _shared(path: str | Path | None, default: str) -> Path:
    p = Path(path) if path else shared_data_dir() / default
    if not p.exists():
        raise LabeledDataError(f"data file not found: {p} (public data lives in core.paths.shared_data_dir(); "
                               "set FLOWROUTER_SHARED_DATA to point elsewhere)")
    return p


def import_it_tickets(path: str | Path | None = None, limit: int | None = None) -> list[LabeledQuery]:
    """IT service-desk tickets: text = `Document` (already lower-cased, stop words removed),
    task = slug of `Topic_group` (see IT_TICKET_TASKS). Ids are `its-<row>` (row 2 = first data
    row). `limit` keeps the first N usable rows in file order; use `split_labeled` for stratified
    subsets."""
    p = _shared(path, "it-service-tickets/tickets.dev.csv")
    out: list[LabeledQuery] = []
    for n, row in read_rows(p):
        text = (row.get("Document") or "").strip()
        label = (row.get("Topic_group") or "").strip()
        if not text or not label:
            continue
        task = IT_TICKET_TASKS.get(label) or slug(label)
        out.append(LabeledQuery(id=f"its-{n}", text=text, task=task, source="it-service-tickets"))
        if limit is not None and len(out) >= limit:
            break
    return out


def owl_options(row: dict) -> dict[str, str]:
    """The A-D options of an OWL-Bench row that are present (letter -> text)."""
    return {k: str(row[k]).strip() for k in "ABCD" if str(row.get(k) or "").strip()}


def import_owl_bench(path: str | Path | None = None, with_options: bool = False) -> list[LabeledQuery]:
    """OWL-Bench ops MC questions: text = question (plus `A. ...` option lines when `with_options`),
    task = English slug of `category` (see OWL_TASKS). Ids are `owl-<id>`."""
    p = _shared(path, "owl-bench/mc_ops_domains.dev.csv")
    out: list[LabeledQuery] = []
    seen: set[str] = set()
    for n, row in read_rows(p):
        question = (row.get("question") or "").strip()
        category = (row.get("category") or "").strip()
        if not question or not category:
            continue
        text = question
        if with_options:
            text += "\n" + "\n".join(f"{k}. {v}" for k, v in owl_options(row).items())
        qid = f"owl-{(row.get('id') or '').strip() or n}"
        if qid in seen:
            qid = f"owl-row{n}"
        seen.add(qid)
        out.append(LabeledQuery(id=qid, text=text, task=OWL_TASKS.get(category) or slug(category),
                                source="owl-bench"))
    return out


def _rank(seed: int, qid: str) -> str:
    return hashlib.sha256(f"{seed}:{qid}".encode()).hexdigest()


def split_labeled(
    items: list[LabeledQuery], test_fraction: float, seed: int = 0
) -> tuple[list[LabeledQuery], list[LabeledQuery]]:
    """Deterministic stratified split -> (train, test), each in the input order.

    Per task, items are ranked by sha256(f"{seed}:{id}") and the first round(n * test_fraction)
    go to test. A task with at least 2 items keeps at least one item on each side (when
    0 < test_fraction < 1); a task with a single item stays in train. Ranking by id hash rather
    than by position makes the split independent of input order, and appending rows moves at most
    the few existing items whose rank sits at the test/train boundary.
    """
    if not 0 <= test_fraction <= 1:
        raise ValueError("test_fraction must be in [0, 1]")
    ids = [q.id for q in items]
    if len(set(ids)) != len(ids):
        raise ValueError("split_labeled needs unique ids")
    by_task: dict[str, list[LabeledQuery]] = defaultdict(list)
    for q in items:
        by_task[q.task].append(q)
    test_ids: set[str] = set()
    for _task, group in by_task.items():
        n = len(group)
        k = round(n * test_fraction)
        if 0 < test_fraction < 1 and n >= 2:
            k = min(max(k, 1), n - 1)
        elif n == 1 and test_fraction < 1:
            k = 0
        ranked = sorted(group, key=lambda q: _rank(seed, q.id))
        test_ids.update(q.id for q in ranked[:k])
    train = [q for q in items if q.id not in test_ids]
    test = [q for q in items if q.id in test_ids]
    return train, test


def task_counts(items: list[LabeledQuery]) -> dict[str, int]:
    """Items per task, sorted by task name."""
    counts: dict[str, int] = defaultdict(int)
    for q in items:
        counts[q.task] += 1
    return dict(sorted(counts.items()))
