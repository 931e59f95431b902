"""The dead-letter circuit breaker: stop advancing when too much of the input is being rejected. Pure.

A bad deploy or a changed producer can turn every message invalid; dead-lettering them all would
drain the topic into the dead-letter queue and hide the problem. The breaker looks at the outcome
of the records about to be committed (rejected or written, in order) together with recent history
and refuses the commit when the rejected share of the last `window` records passes `max_ratio`
(once at least `min_records` were seen), or when `max_consecutive` records in a row were rejected.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BreakerPolicy:
    max_ratio: float = 0.5
    window: int = 10_000
    min_records: int = 100
    max_consecutive: int = 1_000

    def __post_init__(self) -> None:
        if not 0 < self.max_ratio <= 1 or self.window < 1 or self.max_consecutive < 1 or self.min_records < 1:
            raise ValueError("breaker limits must be positive (max_ratio in (0, 1])")


class DeadLetterBreaker:
    """Keeps the recent outcomes; `check` says whether more outcomes may be committed."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._recent: deque[bool] = deque(maxlen=policy.window)
        self._consecutive = 0

    def check(self, outcomes: Sequence[bool]) -> str | None:
        """Why committing `outcomes` (True = rejected) would trip the breaker, or None if it may go ahead."""
        policy = self.policy
        consecutive = self._consecutive
        if any(outcomes):  # else no run of rejections grows (scanned in C: a clean batch costs no loop)
            for rejected in outcomes:
                consecutive = consecutive + 1 if rejected else 0
                if consecutive >= policy.max_consecutive:
                    return f"{consecutive} consecutive messages rejected (limit {policy.max_consecutive})"
        combined = [*self._recent, *outcomes][-policy.window :]
        if len(combined) >= policy.min_records:
            ratio = sum(combined) / len(combined)
            if ratio > policy.max_ratio:
                return f"{ratio:.0%} of the last {len(combined)} messages rejected (limit {policy.max_ratio:.0%})"
        return None

    def record(self, outcomes: Sequence[bool]) -> None:
        """Remember `outcomes` as committed."""
        self._recent.extend(outcomes)
        # The run of rejections is now the outcomes after the last written record (found in C: a
        # window of 5,000 outcomes costs no Python loop), or it grew by all of them.
        if False in outcomes:
            self._consecutive = outcomes[::-1].index(False)
        else:
            self._consecutive += len(outcomes)
