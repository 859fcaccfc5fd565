"""Adaptive best-of-N: N shrinks step by step with the load, serves cached workflows past the last step,
and comes back when the queue drains."""

import pytest
from pydantic import ValidationError

from core.config import AdaptiveNConfig, AdaptiveNStep
from deployments.adaptive import AdaptiveN, Load


def _load(ahead: int, slots: int = 8) -> Load:
    return Load(inflight=min(ahead, slots), waiting=max(0, ahead - slots), queued_async=0, slots=slots)


def test_n_shrinks_with_pressure_and_comes_back():
    policy = AdaptiveN(AdaptiveNConfig())
    seen = [policy.choose(4, _load(ahead)) for ahead in (0, 7, 8, 15, 16, 31, 32, 3)]
    assert [c.n for c in seen] == [4, 4, 2, 2, 1, 1, 1, 4]
    assert [c.reuse_any_n for c in seen] == [False] * 6 + [True, False]
    assert seen[0].reason == "requested" and seen[-1].reason == "requested"
    assert "8 tickets ahead of 8 compute slots" in seen[2].reason and "capped at 2" in seen[2].reason
    assert "cached workflow" in seen[6].reason


def test_a_ticket_asking_for_less_keeps_what_it_asked_and_async_queue_counts():
    policy = AdaptiveN(AdaptiveNConfig())
    assert policy.choose(1, _load(10)).n == 1 and policy.choose(1, _load(10)).reason == "requested"
    queued = Load(inflight=2, waiting=0, queued_async=30, slots=8)
    assert policy.choose(4, queued).n == 1


def test_disabled_policy_never_changes_n():
    policy = AdaptiveN(AdaptiveNConfig(enabled=False))
    assert policy.choose(4, _load(100)).n == 4


def test_steps_must_tighten_with_pressure():
    with pytest.raises(ValidationError, match="must not grow"):
        AdaptiveNConfig(steps=[AdaptiveNStep(pressure=1, max_n=1), AdaptiveNStep(pressure=2, max_n=3)])
    with pytest.raises(ValidationError, match="same pressure"):
        AdaptiveNConfig(steps=[AdaptiveNStep(pressure=1, max_n=2), AdaptiveNStep(pressure=1, max_n=1)])
