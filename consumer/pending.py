"""The records of closed windows not yet written: what the loop hands to the writer thread next.

A window closes into `Pending`; the loop hands everything pending to the writer in one batch. A
write that fails gives its records back, ahead of anything newer, so the retry writes them first
and in order. Records of partitions this consumer stops owning are dropped. Loop thread only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from consumer.window import Trigger, Window
from pipeline.records import PartitionId, Record, records_bytes


def _ordered(records: Iterable[Record]) -> list[Record]:
    """A batch's order: by partition, then offset."""
    return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))


class Pending:
    """Closed, unwritten records (ordered by partition, then offset) and the trigger that closed them."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.trigger = Trigger.RECORDS
        self.bytes = 0  # keys plus values of `records`

    def __len__(self) -> int:
        return len(self.records)

    def partitions(self) -> set[PartitionId]:
        return {record.partition_id for record in self.records}

    def add(self, records: Sequence[Record], trigger: Trigger, size: int | None = None) -> None:
        """A window closed by `trigger` (its records ordered, each newer than any pending of its
        partition); `size`: their bytes when the window counted them (else they are counted here)."""
        self.records = _ordered([*self.records, *records]) if self.records else list(records)
        self.trigger = trigger
        self.bytes += records_bytes(records) if size is None else size

    def add_window(self, window: Window, trigger: Trigger) -> None:
        """Close `window` (`Window.take`) into what is pending, with the bytes it counted."""
        size = window.bytes
        self.add(window.take(), trigger, size)

    def take(self) -> tuple[list[Record], Trigger]:
        """Everything pending, to hand over to the writer; nothing is pending afterwards."""
        records, self.records, self.bytes = self.records, [], 0
        return records, self.trigger

    def give_back(self, records: Sequence[Record], trigger: Trigger) -> None:
        """A write failed: its records are pending again, ahead of anything newer."""
        self.keep(_ordered([*records, *self.records]))
        self.trigger = trigger

    def keep(self, records: list[Record]) -> None:
        """Replace what is pending by `records` (a filtered subset of it, in order)."""
        self.records, self.bytes = records, records_bytes(records)

    def drop(self, pids: Iterable[PartitionId]) -> None:
        """Forget the records of partitions no longer owned, or whose position is being re-read."""
        gone = set(pids)
        if gone and self.records:
            self.keep([record for record in self.records if record.partition_id not in gone])
