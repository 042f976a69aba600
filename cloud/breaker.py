"""A circuit breaker: after a connection error, timeout, 5xx, exhausted 429, malformed reply or overrun, stop calling for a while."""

from __future__ import annotations

import time


class CircuitBreaker:
    def __init__(self, cooldown_s: float = 60.0, clock=time.monotonic) -> None:
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.opened_at: float | None = None
        self.reason: str | None = None
        self.trips = 0

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        if self.clock() - self.opened_at >= self.cooldown_s:
            self.opened_at = None  # half-open: let one call through
            return True
        return False

    def trip(self, reason: str) -> None:
        self.opened_at = self.clock()
        self.reason = reason
        self.trips += 1

    def reset(self) -> None:
        self.opened_at = None
        self.reason = None
