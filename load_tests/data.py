"""Real ticket text for load tests, read in place from ../shared/data/it-service-tickets (never copied).

Two patterns:
  - alert storm: a few incidents, each replayed as many near-duplicates (other host names,
    counters, timestamps, reply prefixes, case), the way a monitoring storm looks;
  - diverse flood: distinct tickets sampled across the data set's topics.
Load tests talk to the service over HTTP only; this module imports nothing of FlowRouter's.
"""

from __future__ import annotations

import csv
import os
import random
import string
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO.parent / "shared" / "data" / "it-service-tickets" / "tickets.dev.csv"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class DataUnavailable(RuntimeError):
    """The ticket data set is not on this machine (load tests skip with this reason)."""


def tickets_csv() -> Path:
    return Path(os.environ.get("FLOWROUTER_TICKETS_CSV", DEFAULT_CSV))


def load_rows(limit: int | None = 5000, path: Path | None = None) -> list[dict]:
    """Rows {text, topic} with usable text (at least 5 words), in file order."""
    path = path or tickets_csv()
    if not path.exists():
        raise DataUnavailable(f"ticket data not found at {path} (set FLOWROUTER_TICKETS_CSV or fetch "
                              "../shared/data/it-service-tickets)")
    rows = []
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        for r in csv.DictReader(fh):
            text = " ".join((r.get("Document") or "").split())
            if len(text.split()) >= 5:
                rows.append({"text": text, "topic": r.get("Topic_group") or ""})
            if limit and len(rows) >= limit:
                break
    if not rows:
        raise DataUnavailable(f"{path} holds no usable tickets")
    return rows


def to_ticket(text: str, title_words: int = 8, max_chars: int = 1500) -> dict:
    """A request body: the first words as title, the rest as description (bounded in size)."""
    words = text.split()
    title = " ".join(words[:title_words])[:200]
    description = " ".join(words[title_words:])[:max_chars]
    return {"title": title, "description": description}


def run_nonce(rng: random.Random | None = None) -> str:
    """Letters only (normalization keeps words), so each run's storm is new to the result cache."""
    rng = rng or random.Random()
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(6))


def storm_incidents(rows: list[dict], k: int = 3, seed: int = 6) -> list[str]:
    """`k` incidents from different topics: the sources of an alert storm."""
    rng = random.Random(seed)
    by_topic: dict[str, list[str]] = {}
    for r in rows:
        if 8 <= len(r["text"].split()) <= 60:
            by_topic.setdefault(r["topic"], []).append(r["text"])
    topics = sorted(by_topic)
    rng.shuffle(topics)
    return [rng.choice(by_topic[t]) for t in topics[:k]]


def near_duplicate(text: str, rng: random.Random) -> str:
    """The same incident as another alert would report it: new host, counters, time, prefix, case."""
    family = ["srv", "db", "web", "app", "node"][sum(map(ord, text)) % 5]  # one service's hosts per incident
    host = f"{family}-{rng.randint(1, 99):02d}"
    stamp = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    t = f"{text} host {host} at {stamp} count {rng.randint(1, 500)}"
    if rng.random() < 0.3:
        t = "RE: " + t
    if rng.random() < 0.3:
        t = t.upper()
    return t


def diverse(rows: list[dict], k: int, seed: int = 7, skip: int = 0) -> list[str]:
    """`k` distinct tickets spread across topics (round robin over topics, shuffled within each)."""
    rng = random.Random(seed)
    by_topic: dict[str, list[str]] = {}
    seen = set()
    for r in rows:
        if r["text"] not in seen:
            seen.add(r["text"])
            by_topic.setdefault(r["topic"], []).append(r["text"])
    for v in by_topic.values():
        rng.shuffle(v)
    out, topics, i = [], sorted(by_topic), 0
    while len(out) < k + skip and any(by_topic.values()):
        pool = by_topic[topics[i % len(topics)]]
        if pool:
            out.append(pool.pop())
        i += 1
    return out[skip:skip + k]


def require_loopback(url: str) -> None:
    """Load tests only ever hit this machine."""
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to load-test {url}: load tests run against 127.0.0.1 only")
