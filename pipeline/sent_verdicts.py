"""Verdicts of the database that a write hands to the dead-letter topic before its COMMIT: kept for the
write that follows, so that a retry never writes a message a dead letter may already hold.

Why. A row the database rejects (a constraint, a value out of range) or a find-only lookup finds no
reference row for is dead-lettered before the transaction commits (pipeline.writer, step 5). If that
COMMIT, or the delivery itself, then fails (the connection drops, the dead-letter topic times out
after acknowledging some letters), the whole window is written again. Decoding's verdicts depend on
the message's bytes only, but these depend on the database: a reference row or a parent row created
in between would let the retry write the message, which then sits in the table *and* in the
dead-letter topic (and a replay of the letter would count it twice under a dedupe key made of
offsets). So the retry keeps those records out, rejected as before, and hands their letters to the
sink again before any position moves past them (the sink does not send a letter twice that the topic
acknowledged).

A verdict is remembered before its letter is handed over: once handed over, it may be in the topic.
It is forgotten again when the sink refused before handing any letter over (the circuit breaker, no
dead-letter topic): then no letter exists, and the message is judged again when the write is retried.
The next write takes the verdicts of its own records and forgets the rest: a retry writes every record
still pending, so a verdict that is not in it belongs to a record that was committed or to a partition
this consumer no longer owns. Within one process only, and only while its partitions stay: after a
crash, a rebalance or a shutdown between the letter and the COMMIT, whoever reads the message next
judges it again, and so does this consumer after `durability = replay` lost a commit (README,
"Delivery semantics"). Used by the writer's thread only. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from pipeline.records import Batch, PartitionId, Rejection

Coordinates = tuple[str, int, int]
Verdict = tuple[Rejection, str | None]
"""A rejection, and the topic ID of the incarnation its record was read from."""


class SentVerdicts:
    """The database's verdicts handed to the dead-letter topic, by their records' coordinates."""

    def __init__(self) -> None:
        self._sent: dict[Coordinates, Verdict] = {}

    def __len__(self) -> int:
        return len(self._sent)

    def take(self, batch: Batch, row_records: Sequence[int]) -> dict[int, Rejection]:
        """The rows (by index; `row_records[row]` is its record's index in `batch.records`) whose record
        has a verdict here, with it; every other verdict is forgotten. A record matches only at the same
        coordinates, from the same topic incarnation, with the same value: a re-created topic reuses
        coordinates."""
        sent = self._sent
        if not sent:
            return {}
        records, topic_ids = batch.records, batch.topic_ids
        found: dict[int, Rejection] = {}
        kept: dict[Coordinates, Verdict] = {}
        for row, index in enumerate(row_records):
            record = records[index]
            at = (record.topic, record.partition, record.offset)
            verdict = sent.get(at)
            if verdict is None:
                continue
            rejection, topic_id = verdict
            if rejection.record.value == record.value and topic_id == topic_ids.get((at[0], at[1])):
                # About this write's own record object: the sink matches rejections to records by identity.
                found[row] = rejection if rejection.record is record else replace(rejection, record=record)
                kept[at] = (found[row], topic_id)
        self._sent = kept
        return found

    def remember(self, rejections: Iterable[Rejection], topic_ids: Mapping[PartitionId, str | None]) -> None:
        """`rejections` are about to be handed to the dead-letter topic."""
        sent = self._sent
        for rejection in rejections:
            record = rejection.record
            sent[(record.topic, record.partition, record.offset)] = (
                rejection,
                topic_ids.get((record.topic, record.partition)),
            )

    def forget(self, rejections: Iterable[Rejection]) -> None:
        """`rejections` were refused before any was handed over: they may be judged again."""
        for rejection in rejections:
            record = rejection.record
            self._sent.pop((record.topic, record.partition, record.offset), None)

    def settle(self, positions: Mapping[PartitionId, int]) -> None:
        """A COMMIT stored `positions`: the verdicts of records before them are final (the records are
        never written again), so they are forgotten."""
        if not self._sent:
            return
        self._sent = {
            at: verdict
            for at, verdict in self._sent.items()
            if (position := positions.get((at[0], at[1]))) is None or at[2] >= position
        }
