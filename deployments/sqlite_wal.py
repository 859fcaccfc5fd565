"""One SQLite connection setup for the service's durable stores (tickets, webhook deliveries)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect_wal(path: str | Path) -> sqlite3.Connection:
    """Autocommit, WAL (readers never block the writer; several replicas share one file), rows by name."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.row_factory = sqlite3.Row
    return conn
