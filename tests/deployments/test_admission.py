"""Admission control: bounded slots, bounded FIFO queue, 429/503 with Retry-After, no lost slots."""

import asyncio

import pytest

from deployments.admission import AdmissionController, Overloaded


def test_slots_queue_and_refuse():
    async def main():
        adm = AdmissionController(max_inflight=2, max_waiting=2, max_wait_s=5)
        release = asyncio.Event()
        order = []

        async def job(i):
            async with adm.slot():
                order.append(i)
                await release.wait()

        tasks = [asyncio.create_task(job(i)) for i in range(4)]
        await asyncio.sleep(0.01)
        assert adm.inflight == 2 and adm.waiting == 2
        assert not adm.has_room(1)
        with pytest.raises(Overloaded) as exc:
            async with adm.slot():
                pass
        assert exc.value.status == 429 and int(exc.value.headers()["Retry-After"]) >= 1
        release.set()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3]  # FIFO
        assert adm.inflight == 0 and adm.waiting == 0
        assert adm.throughput() > 0
        return adm

    adm = asyncio.run(main())
    assert adm.rejected["queue_full"] == 1


def test_wait_timeout_is_503_and_frees_nothing_twice():
    async def main():
        adm = AdmissionController(max_inflight=1, max_waiting=4, max_wait_s=0.05)
        hold = asyncio.Event()

        async def holder():
            async with adm.slot():
                await hold.wait()

        t = asyncio.create_task(holder())
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as exc:
            async with adm.slot():
                pass
        assert exc.value.status == 503
        assert adm.waiting == 0 and adm.inflight == 1
        hold.set()
        await t
        assert adm.inflight == 0
        async with adm.slot():  # still usable
            assert adm.inflight == 1

    asyncio.run(main())


def test_unbounded_callers_wait_past_the_queue_bound_and_cancel_cleanly():
    async def main():
        adm = AdmissionController(max_inflight=1, max_waiting=0, max_wait_s=0.01)
        hold = asyncio.Event()
        done = []

        async def job(i, bounded):
            async with adm.slot(bounded=bounded):
                await hold.wait()
                done.append(i)

        first = asyncio.create_task(job(0, True))
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(job(1, False))  # the async worker: no bound, no timeout
        cancelled = asyncio.create_task(job(2, False))
        await asyncio.sleep(0.05)
        assert adm.waiting_all == 2 and adm.waiting == 0
        cancelled.cancel()
        await asyncio.sleep(0)
        hold.set()
        await asyncio.gather(first, waiting)
        assert done == [0, 1] and adm.inflight == 0

    asyncio.run(main())


def test_retry_after_tracks_throughput():
    now = [100.0]
    adm = AdmissionController(max_inflight=2, max_waiting=2, max_wait_s=5, default_retry_after_s=7,
                              clock=lambda: now[0])
    assert adm.retry_after() == 7  # nothing measured yet
    for _ in range(10):  # 10 completions in 10 s -> 1/s
        now[0] += 1
        adm._done.append(now[0])
    adm.inflight = 2
    assert 1 <= adm.retry_after() <= 5


def test_critical_tickets_wait_ahead_and_shed_the_newest_low_severity_waiter():
    async def main():
        adm = AdmissionController(max_inflight=1, max_waiting=2, max_wait_s=5)
        release = asyncio.Event()
        order, refused = [], []

        async def job(name, critical=False):
            try:
                async with adm.slot(critical=critical):
                    order.append(name)
                    await release.wait()
            except Overloaded as exc:
                refused.append((name, exc.status, exc.kind))

        tasks = [asyncio.create_task(job("low-0"))]
        await asyncio.sleep(0.01)
        tasks += [asyncio.create_task(job("low-1")), asyncio.create_task(job("low-2"))]
        await asyncio.sleep(0.01)
        assert adm.waiting == 2  # the queue is full of low-severity tickets
        tasks.append(asyncio.create_task(job("crit-1", critical=True)))
        await asyncio.sleep(0.01)
        assert refused == [("low-2", 503, "shed")]  # the newest low-severity waiter made room
        tasks.append(asyncio.create_task(job("crit-2", critical=True)))
        await asyncio.sleep(0.01)
        assert refused[-1] == ("low-1", 503, "shed")
        tasks.append(asyncio.create_task(job("crit-3", critical=True)))  # the queue is full of critical ones now
        await asyncio.sleep(0.01)
        assert refused[-1] == ("crit-3", 429, "queue_full")
        release.set()
        await asyncio.gather(*tasks)
        return adm, order

    adm, order = asyncio.run(main())
    assert order == ["low-0", "crit-1", "crit-2"]
    assert adm.rejected == {"queue_full": 1, "wait_timeout": 0, "shed": 2} and adm.inflight == 0


def test_a_critical_ticket_jumps_the_queue_without_shedding_when_there_is_room():
    async def main():
        adm = AdmissionController(max_inflight=1, max_waiting=4, max_wait_s=5)
        release = asyncio.Event()
        order = []

        async def job(name, critical=False):
            async with adm.slot(critical=critical):
                order.append(name)
                await release.wait()

        tasks = [asyncio.create_task(job("first"))]
        await asyncio.sleep(0.01)
        for name, crit in (("low-1", False), ("low-2", False), ("crit", True)):
            tasks.append(asyncio.create_task(job(name, crit)))
            await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*tasks)
        return adm, order

    adm, order = asyncio.run(main())
    assert order == ["first", "crit", "low-1", "low-2"] and adm.rejected["shed"] == 0


def test_reserved_slots_keep_room_for_a_critical_ticket_in_a_flood():
    async def main():
        adm = AdmissionController(max_inflight=3, max_waiting=4, max_wait_s=5, reserved_critical=1)
        release = {name: asyncio.Event() for name in ("low-1", "low-2", "low-3", "crit", "crit-2")}
        started = []

        async def job(name, critical=False):
            async with adm.slot(critical=critical):
                started.append(name)
                await release[name].wait()

        tasks = [asyncio.create_task(job(n)) for n in ("low-1", "low-2", "low-3")]
        await asyncio.sleep(0.01)
        assert started == ["low-1", "low-2"] and adm.inflight == 2 and adm.waiting == 1  # the third slot is kept
        tasks.append(asyncio.create_task(job("crit", True)))
        await asyncio.sleep(0.01)
        assert started[-1] == "crit" and adm.inflight == 3  # at once, no turnover needed
        tasks.append(asyncio.create_task(job("crit-2", True)))
        await asyncio.sleep(0.01)
        release["crit"].set()  # a freed reserved slot goes to the waiting critical ticket, not to low-3
        await asyncio.sleep(0.01)
        assert started[-1] == "crit-2" and "low-3" not in started
        release["crit-2"].set()  # now only a reserved slot is free: low-3 still waits
        await asyncio.sleep(0.01)
        assert "low-3" not in started and adm.inflight == 2
        release["low-1"].set()  # an unreserved slot frees: low-3 gets it
        await asyncio.sleep(0.01)
        assert started[-1] == "low-3"
        for e in release.values():
            e.set()
        await asyncio.gather(*tasks)
        return adm

    adm = asyncio.run(main())
    assert adm.inflight == 0 and adm.waiting == 0


def test_reserving_every_slot_is_refused():
    with pytest.raises(ValueError, match="fewer than the slots"):
        AdmissionController(max_inflight=2, max_waiting=2, max_wait_s=5, reserved_critical=2)
    from core.config import FloodConfig

    with pytest.raises(ValueError, match="critical_reserved_slots"):
        FloodConfig(max_inflight_tickets=2, critical_reserved_slots=2)


def test_other_tickets_hold_back_while_a_critical_one_computes_and_no_longer():
    async def main():
        adm = AdmissionController(max_inflight=3, max_waiting=2, max_wait_s=5, reserved_critical=1)
        assert await adm.yield_to_critical(1.0) == 0.0  # nothing critical: no wait at all
        release = asyncio.Event()

        async def critical():
            async with adm.slot(critical=True):
                await release.wait()

        task = asyncio.create_task(critical())
        await asyncio.sleep(0.01)
        assert adm.critical_computing == 1
        capped = await adm.yield_to_critical(0.05)  # held, but never past the cap
        assert 0.04 <= capped < 0.5
        waiter = asyncio.create_task(adm.yield_to_critical(5.0))
        await asyncio.sleep(0.02)
        release.set()
        await task
        held = await waiter
        assert 0.01 <= held < 1.0 and adm.critical_computing == 0  # released when the critical one finished
        assert await adm.yield_to_critical(0.0) == 0.0

    asyncio.run(main())
