"""A pool of Ray actors, one per expert's training job, scheduled by Ray resources.

Each job runs in its own actor process reserving `num_cpus` / `num_gpus` (1 GPU per job on a GPU
cluster; a share of the CPUs here), so Ray places jobs where resources are free and queues the rest.
Jobs are isolated: an exception in one job, or its process dying (out of memory, a segfault), is
reported as that job's failure while the others run to the end. The driver shows one progress bar
per job (its current stage, step / total), polled from the actors.
"""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.threads import thread_env

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    name: str
    ok: bool
    result: Any = None
    error: str | None = None
    seconds: float = 0.0


def _worker_class():
    import ray

    @ray.remote(max_restarts=0, max_task_retries=0)
    class TrainingWorker:
        """Runs one job; a second thread answers progress polls while it trains."""

        def __init__(self, threads: int):
            import torch

            torch.set_num_threads(threads)
            self._progress = {"stage": "starting", "done": 0, "total": 1}

        def _report(self, stage: str, done: int, total: int) -> None:
            self._progress = {"stage": stage, "done": done, "total": max(total, 1)}

        def run(self, fn: Callable, payload: Any) -> Any:
            return fn(payload, self._report)

        def progress(self) -> dict:
            return dict(self._progress)

    return TrainingWorker


Connect = Callable[..., None]  # connect(address, namespace, runtime_env=..., log_to_driver=...)


def ensure_ray(num_cpus_per_job: float, address: str | None = None, threads: int = 1,
               connect: Connect | None = None) -> bool:
    """Connect to `address` with `connect` (the CLI passes cluster.ray_connect.connect_ray), or start a
    private local Ray sized for at least one job. Returns True when this call started Ray (the caller
    then shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    env = {"env_vars": thread_env(threads)}
    if address:
        if connect is None:
            raise ValueError("joining a Ray cluster needs its connect function (cluster.ray_connect.connect_ray)")
        connect(address, "flowrouter-training", runtime_env=env, log_to_driver=True)
    else:
        cpus = max(os.cpu_count() or 1, math.ceil(num_cpus_per_job))
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, namespace="flowrouter-training", log_to_driver=True,
                 runtime_env=env)
    return True


def run_pool(jobs: list[tuple[str, Any]], fn: Callable[[Any, Callable], Any], *, num_cpus: float = 1.0,
             num_gpus: float = 0.0, threads: int = 1, address: str | None = None, show_progress: bool = True,
             poll_s: float = 1.0, connect: Connect | None = None) -> dict[str, JobOutcome]:
    """Run `fn(payload, report)` for every (name, payload) in its own actor; outcome per name."""
    import ray

    started = ensure_ray(num_cpus, address, threads, connect)
    worker_cls = _worker_class()
    actors, pending, t0 = {}, {}, {}
    try:
        for name, payload in jobs:
            actor = worker_cls.options(num_cpus=num_cpus, num_gpus=num_gpus, max_concurrency=2,
                                       name=None).remote(threads)
            actors[name] = actor
            ref = actor.run.remote(fn, payload)
            pending[ref] = name
            t0[name] = time.perf_counter()
        outcomes: dict[str, JobOutcome] = {}
        with _bars(show_progress, [n for n, _ in jobs]) as bars:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=poll_s)
                for ref in done:
                    name = pending.pop(ref)
                    secs = round(time.perf_counter() - t0[name], 1)
                    try:
                        outcomes[name] = JobOutcome(name, True, ray.get(ref), seconds=secs)
                    except Exception as exc:  # RayTaskError (job raised) or RayActorError (process died)
                        outcomes[name] = JobOutcome(name, False, error=_describe(exc), seconds=secs)
                        log.error("training job %s failed: %s", name, outcomes[name].error.splitlines()[0])
                    bars.finish(name, outcomes[name].ok)
                    ray.kill(actors.pop(name), no_restart=True)
                for name in list(pending.values()):
                    try:
                        p = ray.get(actors[name].progress.remote(), timeout=poll_s)
                    except Exception:  # actor busy starting or gone: its outcome arrives via `ray.wait`
                        continue
                    bars.update(name, p)
        return outcomes
    finally:
        for actor in actors.values():
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()


def run_local(jobs: list[tuple[str, Any]], fn: Callable[[Any, Callable], Any], show_progress: bool = True
              ) -> dict[str, JobOutcome]:
    """The same contract in this process, one job after another (debugging, tests)."""
    outcomes = {}
    with _bars(show_progress, [n for n, _ in jobs]) as bars:
        for name, payload in jobs:
            t = time.perf_counter()
            try:
                res = fn(payload, lambda stage, done, total, _n=name: bars.update(
                    _n, {"stage": stage, "done": done, "total": total}))
                outcomes[name] = JobOutcome(name, True, res, seconds=round(time.perf_counter() - t, 1))
            except Exception as exc:
                outcomes[name] = JobOutcome(name, False, error=f"{type(exc).__name__}: {exc}\n"
                                                                f"{traceback.format_exc()}",
                                            seconds=round(time.perf_counter() - t, 1))
            bars.finish(name, outcomes[name].ok)
    return outcomes


def _describe(exc: Exception) -> str:
    import ray

    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return f"{type(cause).__name__}: {cause}\n{exc}"
    if isinstance(exc, ray.exceptions.RayActorError):
        return f"the job's process died: {exc}"
    return f"{type(exc).__name__}: {exc}"


class _bars:
    """One rich progress bar per job: `expert · stage  done/total`."""

    def __init__(self, enabled: bool, names: list[str]):
        self.enabled, self.names = enabled, names
        self._stages: dict[str, str] = {}

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]{task.fields[job]}[/] {task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn())
            self.progress.__enter__()
            self.tasks = {n: self.progress.add_task("queued", total=1, job=n) for n in self.names}
        return self

    def update(self, name: str, p: dict) -> None:
        if self._stages.get(name) != p["stage"]:
            # Stage changes are logged too, so a run without bars (--quiet, a log file) shows progress.
            self._stages[name] = p["stage"]
            log.info("%s: %s", name, p["stage"])
        if self.enabled:
            self.progress.update(self.tasks[name], description=p["stage"], completed=p["done"], total=p["total"])

    def finish(self, name: str, ok: bool) -> None:
        if self.enabled:
            t = self.tasks[name]
            total = self.progress.tasks[[x.id for x in self.progress.tasks].index(t)].total or 1
            self.progress.update(t, description="[green]done[/]" if ok else "[red]failed[/]", completed=total)

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.__exit__(*exc)
