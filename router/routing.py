"""Stage 2: pick the expert for a classified ticket.

Routers are small classes behind one method, registered by name (RouteLLM style), so a new policy
(cost-aware, load-aware) is one class and one registry line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from core.task_map import TaskMap


class Router(ABC):
    @abstractmethod
    def route(self, task: str, task_map: TaskMap) -> str:
        """Expert name for `task` (a task name or `unknown`)."""


class MapRouter(Router):
    """CoE-Ops routing: the leaderboard's argmax expert per task; `unknown` to the best average."""

    def route(self, task: str, task_map: TaskMap) -> str:
        return task_map.route(task)


ROUTERS: dict[str, type[Router]] = {"map": MapRouter}


def get_router(name: str = "map") -> Router:
    try:
        return ROUTERS[name]()
    except KeyError:
        raise ValueError(f"unknown router {name!r}; known: {sorted(ROUTERS)}") from None
