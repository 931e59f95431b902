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
It is forgotten again when the sink refused before handing any of them over (the circuit breaker, no
dead-letter topic): then the message is judged again when the write is retried. (Decoding's letters
may have gone ahead, `RejectSink.send_ahead`, but never the database's.) It is forgotten for good only
on evidence that it no longer applies: a COMMIT moved past its record, or the record at its
coordinates is another message (another value, or another topic ID where both are known: a re-created
topic). A partition this consumer lost keeps its verdicts (they hold again if it comes back): they are
few, each holds its record's key and value only (not the consumed message), and they cost a set
intersection per write.

Within one process only: after a crash, a rebalance or a shutdown between the letter and the COMMIT,
another consumer reading the message judges it again, and so does this one after `durability = replay`
lost a commit (README, "Delivery semantics"). Used by the writer's thread only. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from pipeline.records import Batch, PartitionId, Rejection

Verdict = tuple[Rejection, str | None]
"""A rejection, and the topic ID of the incarnation its record was read from."""


class SentVerdicts:
    """The database's verdicts handed to the dead-letter topic, by partition and offset."""

    def __init__(self) -> None:
        self._sent: dict[PartitionId, dict[int, Verdict]] = {}

    def __len__(self) -> int:
        return sum(map(len, self._sent.values()))

    def take(self, batch: Batch, row_records: Sequence[int]) -> dict[int, Rejection]:
        """The rows (by index; `row_records[row]` is its record's index in `batch.records`) whose record
        has a verdict here, with it. A record matches only at the same coordinates, from the same topic
        incarnation, with the same value; a verdict whose coordinates hold another message, or that the
        batch starts past, is forgotten."""
        sent = self._sent
        if not sent or not (pids := sent.keys() & batch.to_positions.keys()):
            return {}
        records, topic_ids = batch.records, batch.topic_ids
        found: dict[int, Rejection] = {}
        for row, index in enumerate(row_records):
            record = records[index]
            pid = (record.topic, record.partition)
            if pid not in pids or (verdict := sent[pid].get(record.offset)) is None:
                continue
            rejection, topic_id = verdict
            now = topic_ids.get(pid)
            if rejection.record.value != record.value or (topic_id and now and topic_id != now):
                del sent[pid][record.offset]  # another message at these coordinates (an unknown ID is no proof)
                continue
            # About this write's own record object: the sink matches rejections to records by identity.
            found[row] = replace(rejection, record=record)
        self.settle({pid: at for pid in pids if (at := batch.from_positions.get(pid)) is not None})
        for pid in pids & sent.keys():
            if not sent[pid]:
                del sent[pid]
        return found

    def remember(self, rejections: Iterable[Rejection], topic_ids: Mapping[PartitionId, str | None]) -> None:
        """`rejections` are about to be handed to the dead-letter topic."""
        for rejection in rejections:
            record = rejection.record
            pid = (record.topic, record.partition)
            # Without the message's headers accessor, which keeps the whole consumed message alive: `take`
            # hands out the rejection about the next write's own record.
            kept = replace(rejection, record=record._replace(headers=()))
            self._sent.setdefault(pid, {})[record.offset] = (kept, topic_ids.get(pid))

    def forget(self, rejections: Iterable[Rejection]) -> None:
        """`rejections` were refused before any was handed over: they may be judged again."""
        for rejection in rejections:
            record = rejection.record
            offsets = self._sent.get((record.topic, record.partition))
            if offsets is not None:
                offsets.pop(record.offset, None)
                if not offsets:
                    del self._sent[(record.topic, record.partition)]

    def settle(self, positions: Mapping[PartitionId, int]) -> None:
        """`positions` are stored (or a write starts there): the verdicts of records before them are final
        (the records are never written again), so they are forgotten."""
        sent = self._sent
        for pid, position in positions.items():
            offsets = sent.get(pid)
            if offsets is None:
                continue
            kept = {offset: verdict for offset, verdict in offsets.items() if offset >= position}
            if kept:
                sent[pid] = kept
            else:
                del sent[pid]
