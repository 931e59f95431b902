"""What one write did: the figures the consumer counts, reports and acts on. Plain data."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.records import PartitionId, Rejection


@dataclass
class FlushResult:
    """What a successful `write` did. `stored_positions`: where the partitions now stand in the offsets table."""

    stored_positions: dict[PartitionId, int] = field(default_factory=dict)
    inserted: int = 0
    duplicates: int = 0
    summary_rows: dict[str, int] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)
    skipped: int = 0
    statements: int = 0
    savepoints: int = 0
    transactions: int = 0
    bisected: bool = False  # the bulk write failed on bad data at least once: rows were isolated by bisection
