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
from itertools import islice


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
        """Why committing `outcomes` (True = rejected) would trip the breaker, or None if it may go ahead.

        Written to cost a few C passes over a window rather than a Python step per outcome (it runs
        before every commit with a rejection): what one outcome at a time would find, the same text.
        """
        policy = self.policy
        reached = _run_reaching(outcomes, self._consecutive, policy.max_consecutive)
        if reached is not None:
            return f"{reached} consecutive messages rejected (limit {policy.max_consecutive})"
        # The last `window` outcomes of the recent ones followed by these: their rejections, counted.
        length = min(policy.window, len(self._recent) + len(outcomes))
        if length >= policy.min_records:
            rejected = self._rejected_in_last(length - len(outcomes)) + outcomes[-length:].count(True)
            ratio = rejected / length
            if ratio > policy.max_ratio:
                return f"{ratio:.0%} of the last {length} messages rejected (limit {policy.max_ratio:.0%})"
        return None

    def surely_admits(self, rejected: int, outcomes: int) -> bool:
        """True when no `outcomes` outcomes of which at most `rejected` are rejections can trip the
        breaker, in any order: `check` would say None, and their flags need not be made. False: ask
        `check`."""
        policy = self.policy
        if self._consecutive + rejected >= policy.max_consecutive:
            return False
        length = min(policy.window, len(self._recent) + outcomes)
        return length < policy.min_records or (self._recent.count(True) + rejected) / length <= policy.max_ratio

    def _rejected_in_last(self, count: int) -> int:
        """Rejections among the last `count` recent outcomes (in C)."""
        recent = self._recent
        if count <= 0:
            return 0
        before = len(recent) - count
        return recent.count(True) - (list(islice(recent, before)).count(True) if before > 0 else 0)

    def record(self, outcomes: Sequence[bool]) -> None:
        """Remember `outcomes` as committed."""
        self._recent.extend(outcomes)
        # The run of rejections is now the outcomes after the last written record (found in C: a
        # window of 5,000 outcomes costs no Python loop), or it grew by all of them.
        if False in outcomes:
            self._consecutive = outcomes[::-1].index(False)
        else:
            self._consecutive += len(outcomes)


def _run_reaching(outcomes: Sequence[bool], carried: int, limit: int) -> int | None:
    """The length of the run of rejections (`carried` of them before `outcomes`) at the outcome
    where it first reaches `limit`; None when it never does. Jumps from run to run (list.index, in
    C): a window with a few rejections costs a few steps."""
    if not any(outcomes):  # no run grows (scanned in C: a clean batch costs no step)
        return None
    run, at, end = carried, 0, len(outcomes)
    while at < end:
        if not outcomes[at]:
            run, at = 0, _index(outcomes, True, at, end)
            continue
        stop = _index(outcomes, False, at, end)  # the run is outcomes[at:stop]
        if run + stop - at >= limit:
            return max(run + 1, limit)
        run, at = run + stop - at, stop
    return None


def _index(outcomes: Sequence[bool], value: bool, start: int, end: int) -> int:
    """The index of the first `value` in outcomes[start:end], or `end`."""
    try:
        return outcomes.index(value, start, end)
    except ValueError:
        return end
