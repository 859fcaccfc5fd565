"""The actor pool isolates jobs: a job that raises or whose process dies does not stop the others."""

from __future__ import annotations

import os
import time

from training.pool import run_local, run_pool


def _job(payload, report):
    report("working", 1, 2)
    if payload == "raise":
        raise ValueError("boom in the planner stage")
    if payload == "die":
        os._exit(3)  # the actor's process dies (as on an out-of-memory kill)
    time.sleep(1.0)
    report("working", 2, 2)
    return {"trained": payload, "pid": os.getpid()}


def test_ray_pool_isolates_failing_jobs():
    outcomes = run_pool([("good", "a"), ("raises", "raise"), ("dies", "die"), ("good2", "b")], _job,
                        num_cpus=0.5, show_progress=False)
    assert outcomes["good"].ok and outcomes["good"].result["trained"] == "a"
    assert outcomes["good2"].ok and outcomes["good2"].result["trained"] == "b"
    # Each job ran in its own actor process, none in the driver.
    assert outcomes["good"].result["pid"] != outcomes["good2"].result["pid"] != os.getpid()
    assert not outcomes["raises"].ok and "boom in the planner stage" in outcomes["raises"].error
    assert not outcomes["dies"].ok and "died" in outcomes["dies"].error
    import ray

    assert not ray.is_initialized()  # the pool shut down the Ray it started


def test_local_runner_has_the_same_contract():
    outcomes = run_local([("good", "a"), ("raises", "raise"), ("good2", "b")], _job, show_progress=False)
    assert outcomes["good"].ok and outcomes["good2"].ok
    assert not outcomes["raises"].ok and "ValueError: boom" in outcomes["raises"].error
