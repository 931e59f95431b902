"""Putting partitions back where PostgreSQL says they are (Kafka and database I/O for `Positions`).

A partition's stored position is re-read and sought when the consumer's copy of it cannot be trusted:
assigned while the database was unreachable, fenced by the compare-and-set (someone else wrote the
range), or found behind before a retry (the database lost commits). Its buffered records are dropped
and it stays paused until the seek succeeds. Database reads go through the writer thread. Loop
thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from consumer.flow import FlowControl
from consumer.pending import Pending
from consumer.positions import Positions
from consumer.telemetry import Telemetry
from consumer.window import Window
from consumer.writer_thread import WriterThread
from pipeline.errors import DatabaseFailure
from pipeline.records import PartitionId

log = logging.getLogger("microbatch.loop")
SEEK_RETRY_INTERVAL_S = 1.0


def describe(pids: Iterable[PartitionId], stored: Mapping[PartitionId, int]) -> str:
    parts = [f"{t}[{p}]" + (f"@{stored[(t, p)]}" if (t, p) in stored else "") for t, p in pids]
    return ", ".join(parts) if parts else "nothing"


class Seeker:
    """Re-reads stored positions and seeks to them."""

    def __init__(
        self,
        kafka: Consumer,
        writer: WriterThread,
        positions: Positions,
        *,
        window: Window,
        pending: Pending,
        telemetry: Telemetry,
        flow: FlowControl,
        clock: Callable[[], float],
        auto_offset_reset: str,
    ) -> None:
        self._kafka = kafka
        self._writer = writer
        self._positions = positions
        self._window = window
        self._pending = pending
        self._telemetry = telemetry
        self._flow = flow
        self._clock = clock
        self._auto_offset_reset = auto_offset_reset
        self._next_seek_at = 0.0

    def stored(self, pids: Sequence[PartitionId]) -> dict[PartitionId, int]:
        """Stored positions of `pids`, read on the writer thread. Raises DatabaseFailure."""
        return self._writer.call(lambda target: target.stored_positions(pids))

    def forget(self, pids: Iterable[PartitionId]) -> None:
        """Distrust these positions: drop their buffered records, pause them, and seek them again now."""
        owned = self._positions.forget(pids)
        self._window.drop(owned)
        self._pending.drop(owned)
        self._flow.pause(owned)
        self.seek_unknown(now=True)

    def seek_unknown(self, *, now: bool = False) -> None:
        """Seek every partition whose position is unknown to the stored one (at most once a second)."""
        pids = self._positions.unknown()
        if not pids or (not now and self._clock() < self._next_seek_at):
            return
        self._next_seek_at = self._clock() + SEEK_RETRY_INTERVAL_S
        try:
            stored = self.stored(pids)
        except DatabaseFailure as error:
            self._telemetry.database(ok=False)
            log.warning("cannot read stored positions yet (%s); %d partition(s) stay paused", error, len(pids))
            return
        for pid in pids:
            position = stored.get(pid)
            assigned_at = self._positions.assigned_at(pid)
            target = position if position is not None else assigned_at
            if target is None:
                target = self._start_offset(pid)
            try:
                self._kafka.seek(TopicPartition(pid[0], pid[1], target))
            except KafkaException as exc:
                log.debug("seek %s to %s not possible yet: %s", pid, target, exc)
                continue
            self._window.drop([pid])
            self._pending.drop([pid])
            self._positions.sought(pid, position, fetch=target if target >= 0 else None)
            if not self._flow.paused:
                self._kafka.resume([TopicPartition(pid[0], pid[1])])
            log.info("partition %s[%d] positioned at %s", pid[0], pid[1], target if target >= 0 else "the reset policy")

    def behind(self) -> list[PartitionId]:
        """Re-read every trusted stored position; adopt those ahead of ours, return those behind or gone.

        Ahead: a COMMIT landed before an error (its records will be dropped, not written twice).
        Behind or gone: the database lost commits (a crash with asynchronous commit, a restore, a
        failover to a lagging standby); what we wrote there must be read and written again.
        Raises DatabaseFailure when the database cannot be read.
        """
        owned = self._positions.known()
        stored = self.stored(owned)
        behind = [
            pid for pid in owned
            if (believed := self._positions.stored(pid)) is not None and stored.get(pid, -1) < believed
        ]  # fmt: skip
        self._positions.committed({pid: pos for pid, pos in stored.items() if pid not in behind})
        if behind:
            log.warning("stored positions went backwards for %s (the database lost commits): reading them again",
                        describe(behind, stored))  # fmt: skip
        return behind

    def _start_offset(self, pid: PartitionId) -> int:
        """Where a partition without a stored row starts: Kafka's committed offset, else the reset policy."""
        committed = self.announce_kafka_starts([pid])
        if pid in committed:
            return committed[pid]
        return OFFSET_BEGINNING if self._auto_offset_reset == "earliest" else OFFSET_END

    def announce_kafka_starts(self, pids: Sequence[PartitionId]) -> dict[PartitionId, int]:
        """Kafka's committed offsets of `pids` (partitions with no stored row), each announced loudly.

        Starting there is right when a group moves to microbatch; after an emptied or restored offsets
        table it skips what the database lost, so an operator must be able to see it happened.
        """
        if not pids:
            return {}
        try:
            found = self._kafka.committed([TopicPartition(topic, partition) for topic, partition in pids], timeout=10)
        except KafkaException as exc:
            log.debug("committed offsets of %s unavailable: %s", list(pids), exc)
            return {}
        committed = {(tp.topic, tp.partition): int(tp.offset) for tp in found if tp.error is None and tp.offset >= 0}
        for (topic, partition), offset in sorted(committed.items()):
            log.warning(
                "%s[%d] has no stored position in PostgreSQL: starting at the group's Kafka-committed offset %d; "
                "earlier events are not read again (if the offsets table was emptied or restored, reset the "
                "group's Kafka offsets to re-read them)", topic, partition, offset,
            )  # fmt: skip
        return committed
