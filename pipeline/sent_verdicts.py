"""Verdicts of the database that a write sent to the dead-letter topic before its COMMIT: kept until a
COMMIT moves past their records, so that a retry never writes a message a dead letter already holds.

Why. A row the database rejects (a constraint, a value out of range) or a find-only lookup finds no
reference row for is dead-lettered before the transaction commits (pipeline.writer, step 5). If that
COMMIT then fails (the connection drops, a failpoint), the whole window is written again. Decoding's
verdicts depend on the message's bytes only, but these depend on the database: a reference row or a
parent row created in between would let the retry write the message, which then sits in the table
*and* in the dead-letter topic (and a replay of the letter would count it twice under a dedupe key
made of offsets). So the retry keeps those records out, rejected as before: their letters are sent
again (the dead-letter topic may hold two copies of a letter; `dlq replay` sends one).

Within one process only: after a crash between the letter and the COMMIT, the restarted consumer
judges the message again (docs/OPERATIONS.md). Used by the writer's thread only. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pipeline.records import PartitionId, Record, Rejection

MAX_VERDICTS = 10_000
"""Verdicts kept at most; past it the oldest are forgotten (they then hold only within this bound). A
COMMIT forgets the verdicts it moved past, so this many are held only when that many rows were rejected
by writes that all failed to commit."""

Coordinates = tuple[str, int, int]


class SentVerdicts:
    """The database's verdicts that reached the dead-letter topic, by their records' coordinates."""

    def __init__(self, limit: int = MAX_VERDICTS) -> None:
        self._limit = limit
        self._sent: dict[Coordinates, Rejection] = {}

    def __len__(self) -> int:
        return len(self._sent)

    def remember(self, rejections: Iterable[Rejection]) -> None:
        """`rejections` were acknowledged by the dead-letter topic (the sink's `deliver` returned)."""
        sent = self._sent
        for rejection in rejections:
            record = rejection.record
            sent[(record.topic, record.partition, record.offset)] = rejection
        while len(sent) > self._limit:
            del sent[next(iter(sent))]  # the oldest: dicts keep insertion order

    def of_rows(self, records: Sequence[Record], row_records: Sequence[int]) -> dict[int, Rejection]:
        """The rows (by index) whose record already has a verdict here, with it. A record matches only
        at the same coordinates with the same value: a re-created topic reuses coordinates."""
        sent = self._sent
        if not sent:
            return {}
        found: dict[int, Rejection] = {}
        for row, index in enumerate(row_records):
            record = records[index]
            rejection = sent.get((record.topic, record.partition, record.offset))
            if rejection is not None and rejection.record.value == record.value:
                found[row] = rejection
        return found

    def settle(self, positions: Mapping[PartitionId, int]) -> None:
        """A COMMIT stored `positions`: the verdicts of records before them are final (the records are
        never written again), so they are forgotten."""
        if not self._sent:
            return
        self._sent = {
            at: rejection
            for at, rejection in self._sent.items()
            if (position := positions.get((at[0], at[1]))) is None or at[2] >= position
        }
