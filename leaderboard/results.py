"""Leaderboard results on disk: append-only Parquet part files plus a small JSON manifest.

Layout of a results folder:

    leaderboard.json                 manifest: task set (name, version, folder), settings, experts
    tasksets/<version>/              the task set the results refer to (see TaskSet.save)
    results/<expert_version>/part-*.parquet   one row per evaluated (expert, item)
    maps/<map version>.yaml          derived task->expert maps (newest = latest derived)
    scores.csv, leaderboard.png      the current matrix and its heatmap

Every row carries the expert version (`ModelSpec.fingerprint()`), the expert name it was run
under, the task-set version and the evaluation-settings key, and the item's content hash. A
result is reused when (expert version, settings key, item hash) match: a changed item, expert
or scoring setting is evaluated again, an unchanged one never is, whatever else changed in the
task set. Part files are written to a temporary name and renamed, so a reader (or a resumed
run after a crash) only ever sees whole files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from itertools import count
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("expert_version", pa.string()),
    ("expert", pa.string()),
    ("settings_key", pa.string()),
    ("taskset_version", pa.string()),
    ("task", pa.string()),
    ("item_id", pa.string()),
    ("item_key", pa.string()),
    ("kind", pa.string()),
    ("score", pa.float64()),
    ("correct", pa.bool_()),
    ("prediction", pa.string()),
    ("reference", pa.string()),
    ("latency_s", pa.float64()),
    ("detail", pa.string()),
    ("created", pa.string()),
])

_seq = count()
_lock = threading.Lock()


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class ResultStore:
    """Append-only store of per-item results under `<out_dir>/results`."""

    def __init__(self, out_dir: str | Path):
        self.root = Path(out_dir)
        self.dir = self.root / "results"

    def write(self, rows: list[dict]) -> Path | None:
        """Append rows (dicts with SCHEMA's fields) as new part files, one per expert version."""
        if not rows:
            return None
        last = None
        by_expert: dict[str, list[dict]] = {}
        for r in rows:
            by_expert.setdefault(r["expert_version"], []).append(r)
        for ev, group in by_expert.items():
            folder = self.dir / ev
            folder.mkdir(parents=True, exist_ok=True)
            with _lock:
                n = next(_seq)
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            path = folder / f"part-{stamp}-{os.getpid()}-{n:05d}.parquet"
            tmp = path.with_name(path.name + ".tmp")
            table = pa.Table.from_pylist([{k: r.get(k) for k in SCHEMA.names} for r in group], schema=SCHEMA)
            pq.write_table(table, tmp)
            tmp.replace(path)
            last = path
        return last

    def parts(self, expert_versions: list[str] | None = None) -> list[Path]:
        if not self.dir.exists():
            return []
        folders = [self.dir / ev for ev in expert_versions] if expert_versions is not None \
            else sorted(p for p in self.dir.iterdir() if p.is_dir())
        return sorted(p for f in folders if f.is_dir() for p in f.glob("part-*.parquet"))

    def rows(self, expert_versions: list[str] | None = None, settings_key: str | None = None) -> list[dict]:
        """All rows (optionally of some expert versions / one settings key), later duplicates of
        the same (expert version, settings key, item hash) replacing earlier ones."""
        latest: dict[tuple, dict] = {}
        for part in self.parts(expert_versions):
            for r in pq.read_table(part, schema=SCHEMA).to_pylist():
                if settings_key is not None and r["settings_key"] != settings_key:
                    continue
                latest[(r["expert_version"], r["settings_key"], r["item_key"])] = r
        return list(latest.values())

    def done(self, expert_version: str, settings_key: str) -> dict[str, dict]:
        """item hash -> row, for the results an expert version already has under these settings."""
        return {r["item_key"]: r for r in self.rows([expert_version], settings_key)}


# ---- manifest --------------------------------------------------------------------------------
def manifest_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "leaderboard.json"


def read_manifest(out_dir: str | Path) -> dict | None:
    p = manifest_path(out_dir)
    if not p.exists():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


def write_manifest(out_dir: str | Path, manifest: dict) -> None:
    p = manifest_path(out_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(p)
