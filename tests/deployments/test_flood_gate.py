"""The flood gate without Ray or models: a scripted compute function, a real SQLite TicketStore.

Covers coalescing, the cache (and its keys moving with the map version), the bypass flag, admission
refusals that leave no record, async mode drained by the durable worker, retries after a replica
crash, and stale `running` tickets (a crashed ingress) being run again by another worker.
"""

import asyncio

import pytest
import ray.exceptions

from core.config import load_config
from core.schemas import KnowledgeUse, Scores, Ticket, TicketResult, WorkflowOut
from core.task_map import TaskMap
from deployments.admission import Overloaded
from deployments.flood import AlreadySubmitted, Deferred, FloodGate
from deployments.ticket_store import TicketStore

MAP = TaskMap(version="m1", routes={}, fallback="smollm2-generalist")


def _result(ticket: Ticket, task_map: TaskMap, n: int) -> TicketResult:
    wf = WorkflowOut(mermaid="flowchart TD\n  S1[Check]", steps=[{"id": "S1", "kind": "process", "text": "Check"}],
                     edges=[])
    return TicketResult(ticket_id=ticket.id, task="storage", confidence=0.9, decision_path="retrieval",
                        expert="smollm2-generalist", map_version=task_map.version, workflow=wf, best_index=0,
                        candidates=[{"index": 0, "workflow": wf, "scores": Scores(overall=4.0)}],
                        retrieved_examples=[], context_ids=[], knowledge=KnowledgeUse(status="none matched"),
                        timings_ms={"classify": 1.0, "plan": 2.0, "score": 1.0, "compute": 3.5, "total": 4.0})


class Models:
    """Scripted compute: counts calls, can be slowed down, can fail like a crashed replica."""

    def __init__(self, delay=0.05, crashes=0):
        self.calls, self.delay, self.crashes = [], delay, crashes
        self.task_map = MAP

    async def compute(self, ticket, n, expert, task_map):
        self.calls.append(ticket.text())
        await asyncio.sleep(self.delay)
        if self.crashes:
            self.crashes -= 1
            raise ray.exceptions.ActorDiedError()
        return _result(ticket, task_map, n)

    async def current_map(self):
        return self.task_map


def _gate(tmp_path, models, **flood):
    """A gate on the default config with fast timers; no reserved slots or holding back unless a test asks."""
    cfg = load_config()
    cfg.flood = type(cfg.flood).model_validate({**cfg.flood.model_dump(), **dict(
        dict(poll_interval_s=0.05, heartbeat_s=0.1, stale_after_s=0.3, retry_after_s=3, critical_reserved_slots=0,
             critical_hold_s=0), **flood)})
    store = TicketStore(tmp_path / "tickets.sqlite")
    return FloodGate(cfg, store, models.compute, models.current_map), store


def _t(i, title="Disk 97% full on db-01"):
    return Ticket(title=title, description="postgres cannot write WAL", id=f"t{i}")


async def _until(pred, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def test_identical_tickets_in_flight_share_one_computation_then_the_cache(tmp_path):
    models = Models(delay=0.2)

    async def main():
        gate, store = _gate(tmp_path, models)
        variants = [f"Disk {90 + i}% full on db-{i:02d}" for i in range(6)]  # near-duplicates
        results = await asyncio.gather(*[gate.solve_sync(_t(i, v), None, None) for i, v in enumerate(variants)])
        assert len(models.calls) == 1
        shared = sorted(str(r.shared) for r in results)
        assert shared == ["None"] + ["coalesced"] * 5
        leader = next(r for r in results if r.shared is None)
        assert all(r.shared_from == leader.ticket_id for r in results if r.shared)
        assert [r.ticket_id for r in results] == [f"t{i}" for i in range(6)]  # each keeps its own id
        again = await gate.solve_sync(_t(10), None, None)
        assert again.shared == "cache" and len(models.calls) == 1
        for i in [*range(6), 10]:
            row = store.get(f"t{i}")
            assert row["status"] == "done" and row["result"]["ticket_id"] == f"t{i}"
        bypass = await gate.solve_sync(_t(11), None, None, use_cache=False)
        assert bypass.shared is None and len(models.calls) == 2
        other_n = await gate.solve_sync(_t(12), 1, None)
        assert other_n.shared is None and len(models.calls) == 3
        stats = gate.stats()
        assert stats["shared"]["coalesced"] > 0 and stats["shared"]["cache"] > 0
        assert stats["totals"]["done"] == 9 and stats["latency_ms"]["count"] == 9
        assert stats["store"]["done"] == 9
        await gate.worker.stop()

    asyncio.run(main())


def test_cache_key_moves_with_the_map_version(tmp_path):
    models = Models()

    async def main():
        gate, _ = _gate(tmp_path, models)
        await gate.solve_sync(_t(1), None, None)
        assert (await gate.solve_sync(_t(2), None, None)).shared == "cache"
        models.task_map = MAP.model_copy(update={"version": "m2"})  # a map was published
        fresh = await gate.solve_sync(_t(3), None, None)
        assert fresh.shared is None and fresh.map_version == "m2" and len(models.calls) == 2
        models.task_map = MAP  # rolled back: the old entry is valid again
        assert (await gate.solve_sync(_t(4), None, None)).shared == "cache"
        await gate.worker.stop()

    asyncio.run(main())


def test_cache_key_moves_with_what_answers_are_grounded_in(tmp_path):
    """A new knowledge-base version or case-memory revision (approved from the CLI, or a case written on another
    replica) is seen by the next ticket, not hidden behind a cached answer."""
    models = Models()
    grounding = {"stamp": "v0001:0"}

    async def main():
        cfg = load_config()
        gate = FloodGate(cfg, TicketStore(tmp_path / "t.sqlite"), models.compute, models.current_map,
                         grounding=lambda: grounding["stamp"])
        await gate.solve_sync(_t(1), None, None)
        assert (await gate.solve_sync(_t(2), None, None)).shared == "cache"
        grounding["stamp"] = "v0001:1"  # a case was recorded
        assert (await gate.solve_sync(_t(3), None, None)).shared is None
        grounding["stamp"] = "v0002:1"  # a consolidation was approved
        assert (await gate.solve_sync(_t(4), None, None)).shared is None and len(models.calls) == 3
        await gate.worker.stop()

    asyncio.run(main())


def test_cache_key_moves_with_the_model_version(tmp_path):
    models = Models()

    async def main():
        gate, store = _gate(tmp_path, models)
        await gate.solve_sync(_t(1), None, None)
        cfg = load_config()
        cfg.experts[0].system_prompt += " (retrained)"
        gate2 = FloodGate(cfg, store, models.compute, models.current_map)
        gate2.cache = gate.cache  # same cache, new expert version
        assert gate2.model_version != gate.model_version
        assert (await gate2.solve_sync(_t(2), None, None)).shared is None and len(models.calls) == 2
        await gate.worker.stop()
        await gate2.worker.stop()

    asyncio.run(main())


def test_overload_refuses_cleanly_and_records_only_accepted(tmp_path):
    models = Models(delay=0.3)

    async def main():
        gate, store = _gate(tmp_path, models, max_inflight_tickets=2, max_waiting_tickets=2)
        tickets = [_t(i, f"distinct incident number {chr(97 + i)}") for i in range(10)]
        outcomes = await asyncio.gather(*[gate.solve_sync(t, None, None) for t in tickets], return_exceptions=True)
        ok = [o for o in outcomes if isinstance(o, TicketResult)]
        refused = [o for o in outcomes if isinstance(o, Overloaded)]
        assert len(ok) == 4 and len(refused) == 6
        assert all(o.status == 429 and int(o.headers()["Retry-After"]) >= 1 for o in refused)
        counts = store.counts()
        assert counts == {"done": 4}, counts  # refused tickets were never recorded
        assert gate.stats()["rejects"]["by_status"] == {"429": 6}
        await gate.worker.stop()

    asyncio.run(main())


def test_duplicates_of_a_queued_flight_do_not_take_queue_places(tmp_path):
    models = Models(delay=0.2)

    async def main():
        gate, _ = _gate(tmp_path, models, max_inflight_tickets=1, max_waiting_tickets=1)
        first = asyncio.create_task(gate.solve_sync(_t(0, "unrelated outage a"), None, None))
        await asyncio.sleep(0.01)
        storm = [gate.solve_sync(_t(i, f"Disk {i}% full on db-{i}"), None, None) for i in range(1, 8)]
        results = await asyncio.gather(first, *storm)
        assert len(models.calls) == 2 and sum(r.shared == "coalesced" for r in results) == 6
        await gate.worker.stop()

    asyncio.run(main())


def test_replica_crash_is_retried_inline(tmp_path):
    models = Models(crashes=1)

    async def main():
        gate, store = _gate(tmp_path, models)
        r = await gate.solve_sync(_t(1), None, None)
        assert r.shared is None and len(models.calls) == 2
        assert store.get("t1")["status"] == "done"
        assert gate.stats()["totals"]["retries"] == 1
        await gate.worker.stop()

    asyncio.run(main())


def test_sync_ticket_deferred_after_retries_then_completed_by_the_worker(tmp_path):
    models = Models(crashes=2)

    async def main():
        gate, store = _gate(tmp_path, models, max_attempts=2)
        with pytest.raises(Deferred) as exc:
            await gate.solve_sync(_t(1), None, None)
        assert exc.value.ticket_id == "t1"
        await _until(lambda: store.get("t1")["status"] == "done")
        assert store.get("t1")["attempts"] == 2
        await gate.worker.stop()

    asyncio.run(main())


def test_async_tickets_are_queued_durably_and_drained(tmp_path):
    models = Models(delay=0.05)

    async def main():
        gate, store = _gate(tmp_path, models, async_workers=2)
        accepted = [gate.submit_async(_t(i, f"async incident {chr(97 + i)}"), 1, None) for i in range(5)]
        assert accepted[0] == {"ticket_id": "t0", "status": "queued", "status_url": "/v1/tickets/t0"}
        with pytest.raises(AlreadySubmitted):
            gate.submit_async(_t(0), 1, None)
        await _until(lambda: store.counts().get("done") == 5)
        assert all(store.get(f"t{i}")["result"]["ticket_id"] == f"t{i}" for i in range(5))
        assert gate.worker.snapshot()["claimed"] == 5
        await gate.worker.stop()

    asyncio.run(main())


def test_async_backlog_bound(tmp_path):
    models = Models(delay=5)

    async def main():
        gate, store = _gate(tmp_path, models, max_async_backlog=3, async_workers=1)
        for i in range(3):
            gate.submit_async(_t(i, f"backlog {chr(97 + i)}"), 1, None)
        with pytest.raises(Overloaded) as exc:
            gate.submit_async(_t(9, "one too many"), 1, None)
        assert exc.value.status == 429 and exc.value.retry_after_s >= 1
        assert store.get("t9") is None
        await gate.worker.stop()

    asyncio.run(main())


def test_running_tickets_of_a_crashed_replica_are_run_again(tmp_path):
    """A ticket left `running` by a replica that died (no heartbeat) is claimed and completed."""
    models = Models()

    async def main():
        store = TicketStore(tmp_path / "tickets.sqlite")
        # What a crashed ingress leaves behind: accepted, started, never finished.
        for i, mode in enumerate(["sync", "async"]):
            t = _t(i, f"orphan {chr(97 + i)}")
            store.accept(t.id, t.model_dump(), {"n": 1, "expert": None, "cache": True}, mode=mode)
            store.start(t.id)
        assert store.claim(10, stale_after_s=60) == []  # fresh: still someone's
        gate, _ = _gate(tmp_path, models)
        gate.worker.ensure_started()
        await _until(lambda: store.counts() == {"done": 2})
        assert store.get("t0")["attempts"] == 2
        await gate.worker.stop()

    asyncio.run(main())


def test_live_tickets_are_not_stolen(tmp_path):
    """A long computation keeps its ticket alive with heartbeats: nobody runs it twice."""
    models = Models(delay=3.0)

    async def main():
        gate, store = _gate(tmp_path, models, heartbeat_s=0.2, stale_after_s=1.0)
        other = TicketStore(tmp_path / "tickets.sqlite")
        task = asyncio.create_task(gate.solve_sync(_t(1), None, None))
        for _ in range(10):  # 2.5 s: far past stale_after_s, so only heartbeats keep it
            await asyncio.sleep(0.25)
            assert other.claim(10, stale_after_s=1.0) == []
        await task
        assert len(models.calls) == 1 and store.get("t1")["attempts"] == 1
        await gate.worker.stop()

    asyncio.run(main())


def test_a_client_that_disconnects_still_gets_its_ticket_completed(tmp_path):
    models = Models(delay=0.3)

    async def main():
        gate, store = _gate(tmp_path, models)
        task = asyncio.create_task(gate.solve_sync(_t(1), None, None))
        await asyncio.sleep(0.1)  # admitted and computing
        task.cancel()  # what Serve does when the HTTP client goes away
        with pytest.raises(asyncio.CancelledError):
            await task
        await _until(lambda: store.get("t1")["status"] == "done")
        assert len(models.calls) == 1  # the worker joined the computation still in flight (or its cache entry)
        await gate.worker.stop()

    asyncio.run(main())


def test_stats_shape_for_the_console(tmp_path):
    models = Models()

    async def main():
        gate, _ = _gate(tmp_path, models)
        await gate.solve_sync(_t(1), None, None)
        s = gate.stats()
        assert {"replica", "uptime_s", "window_s", "tickets_per_s", "latency_ms", "computed_latency_ms", "stage_ms",
                "unknown_rate", "shared", "errors", "rejects", "totals", "queue", "cache", "store"} <= set(s)
        assert set(s["latency_ms"]) == {"p50", "p95", "p99", "count"}
        assert set(s["stage_ms"]) == {"classify", "plan", "score"}
        assert {"inflight", "waiting", "max_inflight", "max_waiting", "async_queued", "async_running"} <= set(s["queue"])
        assert s["unknown_rate"] == 0 and s["tickets_per_s"] > 0
        await gate.worker.stop()

    asyncio.run(main())


class NModels(Models):
    """Records the N each computation was asked for."""

    def __init__(self, delay=0.2):
        super().__init__(delay)
        self.ns = []

    async def compute(self, ticket, n, expert, task_map):
        self.ns.append(n)
        return await super().compute(ticket, n, expert, task_map)


def test_n_shrinks_under_load_is_reported_and_comes_back(tmp_path):
    models = NModels()
    gate, _ = _gate(tmp_path, models, max_inflight_tickets=2, max_waiting_tickets=16)

    async def main():
        # 6 distinct tickets at once on 2 slots: the later ones see 2+ tickets ahead per slot.
        tasks = []
        for i in range(6):  # arriving one after another, each sees the ones before it
            title = ["disk full", "vpn down", "pod crashloop", "dns failing", "cert expired", "raid degraded"][i]
            tasks.append(asyncio.create_task(gate.solve_sync(_t(i, title), 4, None)))
            await asyncio.sleep(0.01)
        burst = await asyncio.gather(*tasks)
        calm = await gate.solve_sync(_t(99, "printer jammed in the Berlin office"), 4, None)
        return burst, calm

    burst, calm = asyncio.run(main())
    assert [r.n_used for r in burst] == [4, 4, 2, 2, 1, 1]
    assert all(r.n_requested == 4 for r in burst) and "capped at 2" in burst[2].n_reason
    assert models.ns[:6] == [4, 4, 2, 2, 1, 1]
    assert calm.n_used == 4 and calm.n_reason == "requested"  # the queue drained: N is back


def test_past_the_last_step_a_cached_workflow_of_any_n_is_served(tmp_path):
    from core.config import AdaptiveNConfig, AdaptiveNStep

    models = NModels(delay=0.05)
    steps = AdaptiveNConfig(steps=[AdaptiveNStep(pressure=1.0, max_n=1, reuse_cached=True)])
    gate, _ = _gate(tmp_path, models, max_inflight_tickets=1, adaptive_n=steps)

    async def main():
        first = await gate.solve_sync(_t(1), 4, None)  # idle: written with N = 4 and cached
        gate.admission.inflight = 1  # a busy slot: pressure 1.0
        again = await gate.solve_sync(_t(2), 4, None)
        gate.admission.inflight = 0
        return first, again

    first, again = asyncio.run(main())
    assert first.n_used == 4 and again.shared == "cache" and again.n_used == 4
    assert "cached workflow" in again.n_reason and models.ns == [4]
