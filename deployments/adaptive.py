"""Adaptive best-of-N: under load a ticket gets fewer candidates, so the queue drains and the latency SLO holds.

Best-of-N costs about N times the decode of one candidate. When every compute slot is busy and tickets
wait behind them, writing 4 candidates for each makes every ticket in the queue later; writing 1 keeps
them moving. The load is the work ahead of a new ticket (computing + waiting + queued async tickets of
this replica) per compute slot. The policy (`flood.adaptive_n` in the config) is a list of steps: from a
pressure on, N is capped at `max_n`, and past the last step a finished workflow of the same incident is
served from the cache, whatever N it was written with. N comes back as soon as the pressure drops: the
decision is taken per ticket, from the load at that moment. The answer says what was decided and why
(`n_requested`, `n_used`, `n_reason`).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import AdaptiveNConfig


@dataclass(frozen=True)
class Load:
    """What is ahead of a new ticket on this ingress replica."""

    inflight: int
    waiting: int
    queued_async: int
    slots: int

    @property
    def pressure(self) -> float:
        return (self.inflight + self.waiting + self.queued_async) / max(1, self.slots)


@dataclass(frozen=True)
class NChoice:
    n: int
    reason: str
    reuse_any_n: bool = False  # serve a cached workflow of the same incident written with another N


class AdaptiveN:
    def __init__(self, cfg: AdaptiveNConfig):
        self.cfg = cfg
        self.steps = sorted(cfg.steps, key=lambda s: s.pressure)

    def choose(self, requested: int, load: Load) -> NChoice:
        """N for a ticket that asked for `requested` candidates, given the load now."""
        if not self.cfg.enabled or not self.steps:
            return NChoice(requested, "requested")
        p = load.pressure
        applied = [s for s in self.steps if p >= s.pressure]
        if not applied:
            return NChoice(requested, "requested")
        step = applied[-1]
        n = min(requested, step.max_n)
        ahead = load.inflight + load.waiting + load.queued_async
        why = f"{ahead} tickets ahead of {load.slots} compute slots (pressure {p:.2f} >= {step.pressure:g})"
        if step.reuse_cached:
            return NChoice(n, f"{why}: a cached workflow of the same incident is served if there is one, "
                              f"else N = {n}", reuse_any_n=True)
        if n == requested:
            return NChoice(n, "requested")
        return NChoice(n, f"{why}: N capped at {n}")
