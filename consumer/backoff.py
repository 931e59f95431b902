"""Exponential backoff with jitter, as a value the run loop consults. Pure.

stamina and tenacity retry by sleeping inside a call; the run loop must keep polling Kafka between
attempts (group membership, rebalance callbacks), so it only needs the delays.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay n is uniform in [initial/2, min(maximum, initial * 2**n)]: jittered, never near zero."""

    initial_s: float
    maximum_s: float
    uniform: Callable[[float, float], float] = field(default=random.uniform)
    attempts: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one failed attempt."""
        ceiling = min(self.maximum_s, self.initial_s * (2 ** min(self.attempts, 62)))
        self.attempts += 1
        return self.uniform(self.initial_s / 2, ceiling) if ceiling > self.initial_s / 2 else ceiling

    def reset(self) -> None:
        self.attempts = 0
