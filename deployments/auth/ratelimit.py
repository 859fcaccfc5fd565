"""Token buckets for per-key and per-client-address limits.

Buckets live in each ingress replica, so with R replicas a caller can reach R times the configured rate.
"""


import time


class RateLimiter:
    """Token buckets by name. `take` returns 0 when allowed, else the seconds until a token is back."""

    def __init__(self, max_entries: int = 50_000, clock=time.monotonic):
        self._buckets: dict[str, tuple[float, float]] = {}
        self.max_entries = max_entries
        self.clock = clock

    def take(self, name: str, per_minute: int, burst: int, cost: float = 1.0) -> float:
        if per_minute <= 0:
            return 0.0
        now = self.clock()
        rate = per_minute / 60.0
        tokens, last = self._buckets.get(name, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        if tokens >= cost:
            self._buckets[name] = (tokens - cost, now)
            wait = 0.0
        else:
            self._buckets[name] = (tokens, now)
            wait = (cost - tokens) / rate
        if len(self._buckets) > self.max_entries:
            for k, _ in sorted(self._buckets.items(), key=lambda kv: kv[1][1])[: self.max_entries // 2]:
                self._buckets.pop(k, None)
        return wait

    def reset(self, name: str) -> None:
        self._buckets.pop(name, None)
