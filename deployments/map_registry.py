"""The live task->expert map, shared by every ingress replica through one named Ray actor.

The actor owns the on-disk MapStore (history, rollback); ingress replicas keep a local copy and
re-check the version at most once a second, so a publish reaches all of them within a second and
each request keeps the map it started with.
"""

from __future__ import annotations

import logging

import ray

from core.task_map import MapError, MapStore, TaskMap

log = logging.getLogger(__name__)

REGISTRY_NAME = "flowrouter-map-registry"
REGISTRY_NAMESPACE = "flowrouter"


@ray.remote(num_cpus=0, max_restarts=-1)
class MapRegistry:
    def __init__(self, directory: str, initial: dict, tasks: list[str], experts: list[str]):
        self.store = MapStore(directory)
        self.tasks, self.experts = tasks, experts
        current = self.store.current()
        try:
            if current is None:
                raise MapError("no map published yet")
            current.check(tasks, experts)
        except MapError as exc:
            # First start, or the deployment changed under a stored map: serve the configured one.
            first = TaskMap.model_validate(initial).check(tasks, experts)
            log.warning("using the configured map %s (%s)", first.version, exc)
            if current is None or current.model_dump() != first.model_dump():
                if any(h["version"] == first.version for h in self.store.history()):
                    first = first.model_copy(update={"version": f"{first.version}+{len(self.store.history()) + 1}"})
                self.store.publish(first)

    def configure(self, tasks: list[str], experts: list[str]) -> None:
        self.tasks, self.experts = tasks, experts

    def current(self) -> dict:
        return self.store.current().model_dump()

    def version(self) -> str:
        return self.store.current().version

    def history(self) -> list[dict]:
        return self.store.history()

    def publish(self, task_map: dict) -> dict:
        m = TaskMap.model_validate(task_map).check(self.tasks, self.experts)
        return self.store.publish(m).model_dump()

    def rollback(self) -> dict:
        return self.store.rollback().model_dump()


def get_registry(directory: str, initial: dict, tasks: list[str], experts: list[str]):
    handle = MapRegistry.options(name=REGISTRY_NAME, namespace=REGISTRY_NAMESPACE, get_if_exists=True,
                                 lifetime="detached").remote(directory, initial, tasks, experts)
    ray.get(handle.configure.remote(tasks, experts))
    return handle
