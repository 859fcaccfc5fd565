"""The task->expert map (CoE-Ops eq. 5 and 8) and its versioned store.

A map is data: which expert serves each task, and the fallback expert for `unknown` (the one with
the best average over all tasks). Maps are validated against the task set and the deployed experts
before anything serves them; the store keeps every published version for rollback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from core.schemas import UNKNOWN


class MapError(ValueError):
    """A map that must not be served (unknown expert, missing task, bad file)."""


class TaskMap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="Identifier of this map version.")
    routes: dict[str, str] = Field(description="task -> expert name.")
    fallback: str = Field(description="Expert for `unknown` (best average over all tasks).")
    created: str = Field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                         description="UTC creation time.")
    source: str = Field(default="manual", description="What produced it (leaderboard run id, manual, ...).")
    scores: dict[str, dict[str, float]] = Field(default_factory=dict,
                                                description="Leaderboard scores behind the map, task -> expert -> score.")

    def route(self, task: str) -> str:
        if task == UNKNOWN:
            return self.fallback
        return self.routes.get(task, self.fallback)

    def check(self, tasks: list[str], experts: list[str]) -> TaskMap:
        """Raise MapError unless every task is routed and every named expert is deployed."""
        problems = []
        missing = [t for t in tasks if t not in self.routes]
        if missing:
            problems.append(f"tasks without an expert: {missing}")
        extra = [t for t in self.routes if t not in tasks]
        if extra:
            problems.append(f"tasks not in the task set: {extra}")
        unknown = sorted({e for e in [*self.routes.values(), self.fallback] if e not in experts})
        if unknown:
            problems.append(f"experts not deployed: {unknown} (deployed: {sorted(experts)})")
        if problems:
            raise MapError(f"map {self.version} refused: " + "; ".join(problems))
        return self

    @classmethod
    def load(cls, path: str | Path) -> TaskMap:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
            return cls.model_validate(raw)
        except FileNotFoundError as exc:
            raise MapError(f"map file not found: {path}") from exc
        except Exception as exc:
            raise MapError(f"{path} is not a valid map: {exc}") from exc

    def dump(self, path: str | Path) -> None:
        tmp = Path(f"{path}.tmp{os.getpid()}")
        tmp.write_text(yaml.safe_dump(self.model_dump(), sort_keys=False))
        tmp.replace(path)


class MapStore:
    """Published maps on disk: `v0001.yaml`, ... plus `current.json` naming the live one.

    Writes go through a temp file and a rename so a reader never sees half a map.
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pointer = self.dir / "current.json"

    def history(self) -> list[dict]:
        out = []
        for p in sorted(self.dir.glob("v*.yaml")):
            m = TaskMap.load(p)
            out.append({"file": p.name, "version": m.version, "created": m.created, "source": m.source})
        return out

    def current(self) -> TaskMap | None:
        if not self.pointer.exists():
            return None
        name = json.loads(self.pointer.read_text())["file"]
        return TaskMap.load(self.dir / name)

    def current_file(self) -> str | None:
        if not self.pointer.exists():
            return None
        return json.loads(self.pointer.read_text())["file"]

    def publish(self, task_map: TaskMap) -> TaskMap:
        n = len(list(self.dir.glob("v*.yaml"))) + 1
        name = f"v{n:04d}.yaml"
        if any(h["version"] == task_map.version for h in self.history()):
            raise MapError(f"map version {task_map.version!r} was already published; give it a new version")
        task_map.dump(self.dir / name)
        self._point(name, previous=self.current_file())
        return task_map

    def rollback(self) -> TaskMap:
        """Make the map before the current one live again (recorded as its own step)."""
        if not self.pointer.exists():
            raise MapError("nothing has been published yet")
        state = json.loads(self.pointer.read_text())
        prev = state.get("previous")
        if not prev:
            raise MapError("no earlier map to roll back to")
        files = sorted(p.name for p in self.dir.glob("v*.yaml"))
        i = files.index(prev)
        before = files[i - 1] if i > 0 else None
        self._point(prev, previous=before)
        return TaskMap.load(self.dir / prev)

    def _point(self, name: str, previous: str | None) -> None:
        tmp = self.pointer.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"file": name, "previous": previous}))
        tmp.replace(self.pointer)
