"""From leaderboard scores to a task->expert map (CoE-Ops eqs. 4, 5 and 8).

- eq. 4: score(task, expert) = mean item score of the expert on the task's evaluated items
  (MC: accuracy; free text / workflow items contribute their [0, 1] score).
- eq. 5: route(task) = argmax over experts of score(task, expert).
- eq. 8: fallback (the `unknown` route) = argmax over experts of the micro average: the mean item
  score over all evaluated items, so a task with many items weighs more than one with few. The macro
  average (mean of the per-task scores) is reported beside it, never used for routing.

Tie-break (scores equal to 1e-9): for a task, the expert with the higher average (eq. 8 value)
wins, then the expert name that sorts first; for the fallback, the name that sorts first. Tasks
with no evaluation items are routed to the fallback. The map's `scores` holds the matrix
(task -> expert -> score) plus `unknown` -> expert -> average, the numbers behind the fallback.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field

from core.schemas import UNKNOWN
from core.task_map import MapError, TaskMap

EPS = 1e-9


@dataclass
class ScoreMatrix:
    """Scores (task -> expert -> mean item score) with how many items each cell covers."""

    tasks: list[str]
    experts: list[str]
    scores: dict[str, dict[str, float]]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)  # items selected per task

    def eval_tasks(self) -> list[str]:
        """Tasks with at least one scored cell."""
        return [t for t in self.tasks if self.scores.get(t)]

    def missing(self) -> list[tuple[str, str, int, int]]:
        """(task, expert, have, expected) for every cell with fewer results than selected items."""
        out = []
        for t in self.tasks:
            exp = self.expected.get(t)
            if not exp:
                continue
            for e in self.experts:
                have = self.counts.get(t, {}).get(e, 0)
                if have < exp:
                    out.append((t, e, have, exp))
        return out

    def average(self, expert: str) -> float | None:
        """Micro average (eq. 8): the expert's mean score over every evaluated item."""
        total = items = 0.0
        for t in self.eval_tasks():
            if expert not in self.scores[t]:
                continue
            n = self.counts.get(t, {}).get(expert, 0)
            if n <= 0:
                raise ValueError(f"no item count for {expert} on {t}: the micro average needs counts")
            total += self.scores[t][expert] * n
            items += n
        return total / items if items else None

    def macro_average(self, expert: str) -> float | None:
        """The mean of the expert's per-task scores (every task weighs the same)."""
        vals = [self.scores[t][expert] for t in self.eval_tasks() if expert in self.scores[t]]
        return sum(vals) / len(vals) if vals else None

    def to_rows(self) -> list[dict]:
        rows = []
        for t in self.tasks:
            for e in self.experts:
                if e in self.scores.get(t, {}):
                    rows.append({"task": t, "expert": e, "score": self.scores[t][e],
                                 "n": self.counts.get(t, {}).get(e, 0), "expected": self.expected.get(t, 0)})
        return rows


def matrix_from_rows(rows: list[dict], tasks: list[str], experts: list[str],
                     expected: dict[str, int] | None = None) -> ScoreMatrix:
    """Build a matrix from result rows with `task`, `expert` and `score` (eq. 4: mean per cell)."""
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        t, e = r["task"], r["expert"]
        if t not in tasks or e not in experts:
            continue
        sums.setdefault(t, {}).setdefault(e, 0.0)
        counts.setdefault(t, {}).setdefault(e, 0)
        sums[t][e] += float(r["score"])
        counts[t][e] += 1
    scores = {t: {e: sums[t][e] / counts[t][e] for e in sums[t]} for t in sums}
    return ScoreMatrix(tasks=list(tasks), experts=list(experts), scores=scores, counts=counts,
                       expected=dict(expected or {t: max(counts.get(t, {0: 0}).values(), default=0)
                                                  for t in tasks}))


def averages(matrix: ScoreMatrix, kind: str = "micro") -> dict[str, float]:
    """Each expert's average over what it was evaluated on: `micro` (eq. 8, over items; routes `unknown`)
    or `macro` (over tasks; shown beside it)."""
    if kind not in ("micro", "macro"):
        raise ValueError(f"average kind must be micro or macro, not {kind!r}")
    of = matrix.average if kind == "micro" else matrix.macro_average
    out = {}
    for e in matrix.experts:
        a = of(e)
        if a is not None:
            out[e] = a
    return out


def _q(x: float) -> int:
    """Scores compared at 1e-9 resolution so float noise never decides a route."""
    return round(x / EPS)


def best_average(matrix: ScoreMatrix) -> str:
    avg = averages(matrix)
    if not avg:
        raise MapError("no expert has any score: nothing to derive a map from")
    return min(avg, key=lambda e: (-_q(avg[e]), e))


def best_for_task(matrix: ScoreMatrix, task: str) -> str | None:
    cell = matrix.scores.get(task) or {}
    if not cell:
        return None
    avg = averages(matrix)
    return min(cell, key=lambda e: (-_q(cell[e]), -_q(avg.get(e, 0.0)), e))


def map_version(routes: dict, fallback: str, scores: dict, prefix: str = "lb", when: dt.datetime | None = None) -> str:
    """`<prefix>-<UTC yyyymmddThhmmss>-<6 hex of routes+fallback+scores>`: unique per derivation
    time, and the hash says at a glance whether two maps say the same thing."""
    blob = json.dumps([routes, fallback, scores], sort_keys=True)
    when = when or dt.datetime.now(dt.timezone.utc)
    return f"{prefix}-{when.strftime('%Y%m%dT%H%M%S')}-{hashlib.sha256(blob.encode()).hexdigest()[:6]}"


def content_hash(m: TaskMap) -> str:
    return hashlib.sha256(json.dumps([m.routes, m.fallback, m.scores], sort_keys=True).encode()).hexdigest()[:6]


def derive_map(matrix: ScoreMatrix, *, version: str | None = None, source: str = "leaderboard",
               allow_incomplete: bool = False, digits: int = 4) -> TaskMap:
    """eq. 5 routes + eq. 8 fallback as a TaskMap (see the module docstring for ties).

    Raises MapError when a cell has fewer results than the task's selected items (an unfinished
    build would otherwise compare experts on different items), unless `allow_incomplete`.
    """
    if not matrix.experts:
        raise MapError("no experts: nothing to derive a map from")
    missing = matrix.missing()
    if missing and not allow_incomplete:
        head = ", ".join(f"{e} on {t} ({have}/{exp})" for t, e, have, exp in missing[:6])
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        raise MapError(f"leaderboard incomplete: {head}{more}; finish the build first")
    fallback = best_average(matrix)
    routes = {}
    for t in matrix.tasks:
        routes[t] = best_for_task(matrix, t) or fallback
    scores = {t: {e: round(v, digits) for e, v in sorted(matrix.scores[t].items())}
              for t in matrix.tasks if matrix.scores.get(t)}
    scores[UNKNOWN] = {e: round(v, digits) for e, v in sorted(averages(matrix).items())}
    return TaskMap(version=version or map_version(routes, fallback, scores), routes=routes, fallback=fallback,
                   source=source, scores=scores)


@dataclass
class MapDiff:
    """What changed between two maps: routes, fallback, and scores of experts present in both."""

    old_version: str | None
    new_version: str
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)  # task -> (old, new)
    added: dict[str, str] = field(default_factory=dict)  # task -> expert (task new in `new`)
    removed: dict[str, str] = field(default_factory=dict)  # task -> expert (task gone in `new`)
    fallback: tuple[str, str] | None = None
    new_experts: list[str] = field(default_factory=list)  # scored in new, not in old
    dropped_experts: list[str] = field(default_factory=list)

    @property
    def routing_changed(self) -> bool:
        return bool(self.changed or self.added or self.removed or self.fallback)

    def lines(self) -> list[str]:
        out = [f"map {self.old_version or '(none)'} -> {self.new_version}"]
        for t, (a, b) in sorted(self.changed.items()):
            out.append(f"  ~ {t}: {a} -> {b}")
        for t, e in sorted(self.added.items()):
            out.append(f"  + {t}: {e}")
        for t, e in sorted(self.removed.items()):
            out.append(f"  - {t}: {e}")
        if self.fallback:
            out.append(f"  ~ {UNKNOWN} (fallback): {self.fallback[0]} -> {self.fallback[1]}")
        if self.new_experts:
            out.append(f"  experts added: {', '.join(self.new_experts)}")
        if self.dropped_experts:
            out.append(f"  experts dropped: {', '.join(self.dropped_experts)}")
        if not self.routing_changed:
            out.append("  routing unchanged")
        return out

    def as_dict(self) -> dict:
        return {"old_version": self.old_version, "new_version": self.new_version,
                "changed": {t: list(v) for t, v in self.changed.items()}, "added": self.added,
                "removed": self.removed, "fallback": list(self.fallback) if self.fallback else None,
                "new_experts": self.new_experts, "dropped_experts": self.dropped_experts}


def _experts_in(m: TaskMap | None) -> set[str]:
    if m is None:
        return set()
    return {e for cell in m.scores.values() for e in cell} | set(m.routes.values()) | {m.fallback}


def diff_maps(old: TaskMap | None, new: TaskMap) -> MapDiff:
    """Route-by-route comparison (old may be None: everything is added)."""
    d = MapDiff(old_version=old.version if old else None, new_version=new.version)
    old_routes = old.routes if old else {}
    for t, e in new.routes.items():
        if t not in old_routes:
            d.added[t] = e
        elif old_routes[t] != e:
            d.changed[t] = (old_routes[t], e)
    for t, e in old_routes.items():
        if t not in new.routes:
            d.removed[t] = e
    if old is not None and old.fallback != new.fallback:
        d.fallback = (old.fallback, new.fallback)
    elif old is None:
        d.fallback = ("(none)", new.fallback)
    before, after = _experts_in(old), _experts_in(new)
    d.new_experts = sorted(after - before) if old is not None else []
    d.dropped_experts = sorted(before - after)
    return d
