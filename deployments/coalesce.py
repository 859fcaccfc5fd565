"""Doing less work in a ticket flood: near-duplicate keys, a bounded TTL result cache, single flight.

An alert storm is hundreds of tickets that differ only in host names, counters and timestamps. Such
tickets get the same key, so while one is being computed the others wait for it (single flight:
"coalesced"), and once it is done they reuse its result until the TTL runs out ("cache").

The key is a hash of:
  - the normalized ticket text (`normalize`: case, digits, hex ids, IPs, punctuation, reply prefixes
    and whitespace do not matter; word order and words do), or, for a ticket that names its incident
    (an alert's: deployments/alertmanager.py), that incident instead: the alerts of one incident share
    one computation however different their texts are,
  - the live map version (publishing or rolling back a map changes every key),
  - the model version (`model_version`: fingerprints of the classifier, every expert and the scorer,
    plus the planner settings; a new adapter or prompt changes every key),
  - N (best-of-N) and a forced expert, if any.
A knowledge-base rebuild is not in the key: the TTL bounds how long an older answer is served.

Nothing here knows about Ray or HTTP; deployments/flood.py wires it into the request path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.config import FlowRouterConfig

_REPLY_PREFIX = re.compile(r"^\s*(?:(?:re|fw|fwd|aw|tr)\s*:\s*)+", re.IGNORECASE)
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_HEXID = re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{6,}\b")  # hashes, request ids, container ids
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_PUNCT = re.compile(r"[^\w#]+")
_HASHES = re.compile(r"#(?:[\s#]*#)?")


def normalize(text: str) -> str:
    """The part of a ticket's text that decides its workflow, as one canonical string.

    >>> normalize("RE: Disk 97% full on db-01 at 10:42:07") == normalize("disk 98% FULL on db-17 at 11:02:55")
    True
    """
    t = _REPLY_PREFIX.sub("", text.lower())
    t = _UUID.sub("#", t)
    t = _IPV4.sub("#", t)
    t = _HEXID.sub("#", t)
    t = _NUMBER.sub("#", t)
    t = _PUNCT.sub(" ", t).replace("_", " ")
    t = _HASHES.sub("#", t)
    return " ".join(t.split())


def model_version(cfg: FlowRouterConfig) -> str:
    """Fingerprint of every model and setting that shapes an answer (see module doc)."""
    parts = {
        "classifier": [cfg.classifier.model.fingerprint(),
                       cfg.classifier.model_dump(mode="json", exclude={"model"})],
        "experts": sorted((e.name, e.fingerprint(), e.temperature) for e in cfg.experts),
        "scorer": [cfg.scorer.model.fingerprint(), cfg.scorer.dimensions],
        "planner": cfg.planner.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cache_key(text: str, *, map_version: str, model_version: str, n: int, expert: str | None,
              incident: str | None = None, grounding: str = "") -> str:
    """`grounding` names what answers are grounded in (knowledge-base version, case-memory revision): when
    either moves, from any replica or the CLI, earlier answers are no longer found."""
    what = normalize(text) if incident is None else {"incident": incident}
    blob = json.dumps([what, map_version, model_version, int(n), expert or "", grounding])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class ResultCache:
    """Finished results by key: LRU-bounded, each entry valid for `ttl_s` after it was stored."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        self._data: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.hits = self.misses = self.evictions = self.expirations = 0

    def peek(self, key: str) -> Any | None:
        """The live entry under `key`, if any, without counting a hit or a miss or refreshing its LRU place."""
        item = self._data.get(key)
        if item is None or item[0] <= self.clock():
            return None
        return item[1]

    def get(self, key: str) -> Any | None:
        item = self._data.get(key)
        if item is None:
            self.misses += 1
            return None
        expires, value = item
        if self.clock() >= expires:
            del self._data[key]
            self.expirations += 1
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        self._data[key] = (self.clock() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> dict:
        return {"entries": len(self._data), "max_entries": self.max_entries, "ttl_s": self.ttl_s,
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                "expirations": self.expirations}


@dataclass
class Flight:
    """One computation that every identical ticket in flight waits for.

    `admitted` is set once the computation holds a compute slot: from then on it will run to the end,
    whoever waits for it (the leader's client may disconnect; the result still serves the others and
    lands in the cache). Before that, it may be refused (overload), and everyone waiting is refused.
    """

    leader: str
    task: asyncio.Task
    admitted: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: int = 0

    async def wait_admitted(self) -> None:
        """Return once admitted; raise the computation's error if it ended without admission."""
        if self.admitted.is_set():
            return
        waiter = asyncio.ensure_future(self.admitted.wait())
        try:
            await asyncio.wait({waiter, self.task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not self.admitted.is_set():
            self.task.result()  # raises its exception (e.g. Overloaded)
            raise RuntimeError("flight ended before admission without an error")


class SingleFlight:
    """Key -> the flight computing it; a flight leaves the table when its computation ends."""

    def __init__(self):
        self._flights: dict[str, Flight] = {}

    def get(self, key: str) -> Flight | None:
        return self._flights.get(key)

    def start(self, key: str | None, leader: str, factory: Callable[[Flight], Any]) -> Flight:
        """Start `factory(flight)` (a coroutine) as a task; with a key, identical tickets can join it."""
        flight = Flight(leader=leader, task=None)  # type: ignore[arg-type]
        flight.task = asyncio.get_running_loop().create_task(factory(flight))
        if key is not None:
            self._flights[key] = flight

            def _done(_task, key=key, flight=flight):
                if self._flights.get(key) is flight:
                    del self._flights[key]

            flight.task.add_done_callback(_done)
        return flight

    def __len__(self) -> int:
        return len(self._flights)
