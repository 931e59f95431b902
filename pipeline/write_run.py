"""The progress of one write across its transactions (pipeline.writer): which rows and records are
resolved, the positions they reach, and the rejections they made. Used by the writer's thread only. Pure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.bisect import RangeStack
from pipeline.decode import DecodedBatch
from pipeline.flush_result import FlushResult
from pipeline.records import Batch, PartitionId, Rejection


@dataclass
class WriteRun:
    """Progress of one `write` across its transactions."""

    batch: Batch
    decoded: DecodedBatch
    stored: dict[PartitionId, int | None]  # the stored positions as this write's commits move them
    stack: RangeStack
    result: FlushResult = field(default_factory=FlushResult)
    db_rejections: dict[int, Rejection] = field(default_factory=dict)  # row index → rejection
    settled: dict[int, Rejection] = field(default_factory=dict)  # rows already dead-lettered (sent_verdicts)
    committed_records: int = 0  # records before this index are committed (written or rejected)
    copy_per_node: bool = False
    on_statement: Callable[[], None] | None = None  # called once, before the first insert-and-upsert
    on_progress: Callable[[], None] = lambda: None  # after every round trip that can wait (liveness)

    def record_boundary(self) -> int:
        """Records before the returned index are resolved, given the rows resolved so far."""
        resolved_rows = self.stack.resolved
        if resolved_rows < len(self.decoded.rows):
            return self.decoded.row_records[resolved_rows]
        return len(self.batch.records)

    def positions_at(self, boundary: int, partitions: set[PartitionId]) -> dict[PartitionId, int]:
        """Where each of `partitions` stands once the records before `boundary` are resolved."""
        positions = {pid: self.batch.to_positions[pid] for pid in partitions}
        seen: set[PartitionId] = set()
        for record in self.batch.records[boundary:]:
            pid = record.partition_id
            if pid not in seen:
                seen.add(pid)
                positions[pid] = record.offset
        return positions

    def rejections_between(self, start: int, stop: int) -> list[Rejection]:
        """Decode and database rejections of records in [start, stop), in record order."""
        found = [
            (index, rejection)
            for index, rejection in zip(self.decoded.rejected_records, self.decoded.rejections, strict=True)
            if start <= index < stop
        ]
        for row, rejection in self.db_rejections.items():
            index = self.decoded.row_records[row]
            if start <= index < stop:
                found.append((index, rejection))
        found.sort(key=lambda item: item[0])
        return [rejection for _, rejection in found]
