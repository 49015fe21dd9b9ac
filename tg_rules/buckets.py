"""A token bucket: a burst of ``capacity`` calls, refilled at ``rate`` per second."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class TokenBucket:
    capacity: float
    rate: float  # tokens per second
    tokens: float
    stamp: float  # clock reading of the last refill

    @classmethod
    def full(cls, capacity: float, rate: float, now: float) -> TokenBucket:
        return cls(capacity=capacity, rate=rate, tokens=capacity, stamp=now)

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_time(self) -> float:
        """Seconds until one token is available (0 when one is)."""
        if self.tokens >= 1:
            return 0.0
        return (1 - self.tokens) / self.rate if self.rate > 0 else math.inf

    def take(self) -> None:
        self.tokens -= 1

    def give_back(self) -> None:
        """Return a token taken for a call that did not go out after all."""
        self.tokens += 1
