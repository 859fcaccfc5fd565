"""A replica's model gate: one call at a time, a waiting critical call before waiting others."""

import threading
import time

from deployments.priority import PriorityGate


def test_a_waiting_critical_call_goes_before_earlier_waiting_ones():
    gate = PriorityGate()
    order, first_in = [], threading.Event()
    release = threading.Event()

    def call(name, critical=False, hold=None):
        with gate.hold(critical):
            order.append(name)
            if hold is not None:
                first_in.set()
                hold.wait(5)

    running = threading.Thread(target=call, args=("running", False, release))
    running.start()
    first_in.wait(5)
    waiters = [threading.Thread(target=call, args=(f"low-{i}",)) for i in range(3)]
    for t in waiters:
        t.start()
    time.sleep(0.05)
    crit = threading.Thread(target=call, args=("critical", True))
    crit.start()
    while gate.critical_waiting == 0:
        time.sleep(0.005)
    release.set()
    for t in [running, *waiters, crit]:
        t.join(5)
    assert order[0] == "running" and order[1] == "critical" and sorted(order[2:]) == ["low-0", "low-1", "low-2"]
    assert gate.critical_waiting == 0


def test_the_gate_is_free_again_after_an_error():
    gate = PriorityGate()
    try:
        with gate.hold(True):
            raise RuntimeError("model failed")
    except RuntimeError:
        pass
    done = threading.Event()
    t = threading.Thread(target=lambda: (gate.hold().__enter__(), done.set()))
    t.start()
    assert done.wait(2)
