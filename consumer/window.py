"""The buffering window: records per partition until a size, byte or time limit closes it. Pure.

Time comes from an injected clock (seconds, monotonic), so tests never sleep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import chain

from pipeline.records import PartitionId, Record, Run, records_bytes

Clock = Callable[[], float]


class Trigger(StrEnum):
    """Why a window closed (the `trigger` label of the flush metrics)."""

    RECORDS = "records"
    BYTES = "bytes"
    TIME = "time"
    REVOKE = "revoke"
    SHUTDOWN = "shutdown"
    HALT = "halt"  # a partition halts or is placed again (consumer/refusals.py): what was read before, written first


@dataclass(frozen=True)
class WindowLimit:
    """A limit that closes a window, declared once: the trigger it reports (metric label), the
    setting that holds it, its default, bounds and documentation (the README's settings table)."""

    trigger: Trigger
    setting: str
    default: int
    minimum: int
    maximum: int | None
    description: str


LIMITS: tuple[WindowLimit, ...] = (
    WindowLimit(
        Trigger.RECORDS, "max_records", 5000, 1, 1_000_000, "A window closes when it holds this many messages."
    ),
    WindowLimit(
        Trigger.BYTES,
        "max_bytes",
        8 * 1024 * 1024,
        1024,
        None,
        "A window closes when its message keys and values reach this many bytes.",
    ),
    WindowLimit(
        Trigger.TIME, "max_wait_ms", 500, 1, 3_600_000, "A window closes this long after its first message arrived."
    ),
)


@dataclass(frozen=True)
class WindowPolicy:
    """When a window closes: whichever of the limits (LIMITS, same names) is reached first."""

    max_records: int = 5000
    max_bytes: int = 8 * 1024 * 1024
    max_wait_ms: int = 500

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.max_bytes < 1 or self.max_wait_ms <= 0:
            raise ValueError("window limits must be positive")

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000


class Window:
    """Buffers records per partition, in arrival (= offset) order, and says when to close."""

    def __init__(self, policy: WindowPolicy, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self._partitions: dict[PartitionId, list[Record]] = {}
        self._records = 0
        self._bytes = 0
        self._opened_at: float | None = None

    def __len__(self) -> int:
        return self._records

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def room(self) -> int:
        """How many more records fit before the record limit closes the window (at least 1)."""
        return max(1, self.policy.max_records - self._records)

    def add(self, record: Record) -> None:
        """Append one record; the time limit starts counting at the first record of a window."""
        if self._opened_at is None:
            self._opened_at = self._clock()
        self._partitions.setdefault(record.partition_id, []).append(record)
        self._records += 1
        self._bytes += record.size

    def extend(self, runs: Sequence[Run]) -> int:
        """Append a consume() batch's accepted runs (in offset order per partition); returns its bytes
        (keys + values)."""
        if not runs:
            return 0
        if self._opened_at is None:
            self._opened_at = self._clock()
        partitions = self._partitions
        count = 0
        for pid, run in runs:
            partitions.setdefault(pid, []).extend(run)
            count += len(run)
        size = records_bytes(chain.from_iterable(run for _, run in runs))
        self._records += count
        self._bytes += size
        return size

    def ready(self) -> Trigger | None:
        """The limit that closed the window, or None while it stays open (empty: never ready)."""
        if self._records == 0:
            return None
        if self._records >= self.policy.max_records:
            return Trigger.RECORDS
        if self._bytes >= self.policy.max_bytes:
            return Trigger.BYTES
        if self.time_left() == 0.0:
            return Trigger.TIME
        return None

    def time_left(self) -> float | None:
        """Seconds until the time limit closes the window; None while it is empty."""
        if self._opened_at is None:
            return None
        return max(0.0, self._opened_at + self.policy.max_wait_s - self._clock())

    def take(self) -> list[Record]:
        """Close the window: its records ordered by (topic, partition, offset); start a new one."""
        partitions = self._partitions
        records = list(chain.from_iterable(partitions[pid] for pid in sorted(partitions)))
        self._partitions.clear()
        self._records = self._bytes = 0
        self._opened_at = None
        return records

    def drop(self, partitions: Iterable[PartitionId]) -> int:
        """Forget the records of `partitions` (revoked or lost); returns how many were dropped."""
        dropped = 0
        for pid in partitions:
            records = self._partitions.pop(pid, [])
            dropped += len(records)
            self._records -= len(records)
            self._bytes -= records_bytes(records)
        if self._records == 0:
            self._opened_at = None
        return dropped

    def partitions(self) -> set[PartitionId]:
        return set(self._partitions)
