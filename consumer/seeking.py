"""Placing partitions where they must start, and putting them back there (Kafka and database I/O for
`Positions`).

A partition is placed when this consumer takes it, and again whenever its position cannot be
trusted: assigned while the database was unreachable, fenced by the compare-and-set (someone else
wrote the range or reset it), out of range on the broker (retention, truncation), or behind after a
retry (the database lost commits). Placement (consumer/placement.py) decides from the stored row,
the topic's incarnation and the log's bounds; what it moves is written and audited in one
transaction first; a partition that may not be read halts the consumer, and is placed again at each
retry, so an operator's `microbatch positions reset` takes effect without a restart. Database reads
and writes go through the writer thread. Loop thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumer.failures import Action, Failure
from consumer.flow import FlowControl
from consumer.log_facts import LogFacts
from consumer.pending import Pending
from consumer.placement import Facts, Placement, Rules, diverged_at, place
from consumer.positions import Positions
from consumer.telemetry import Telemetry
from consumer.window import Window
from consumer.writer_thread import WriterThread
from pipeline.errors import DatabaseFailure
from pipeline.offsets import PositionChange, PositionConflict, StoredPosition
from pipeline.records import PartitionId

log = logging.getLogger("microbatch.loop")
SEEK_RETRY_INTERVAL_S = 1.0
# Where a partition that could not be placed yet is assigned: an absolute offset, never a logical one
# (END, BEGINNING, STORED). librdkafka resolves a logical offset with an offset lookup, and a lookup
# that answers after our seek to the stored position is retried 500 ms later from the logical offset:
# the fetch position then jumps to the end of the log, and the records between were never delivered
# (librdkafka 2.x, reproduced; it lost 2,400 records in CI before this). The partition stays paused and
# its records are dropped until it is placed and sought (a fetch refused as out of range places it).
UNPLACED_OFFSET = 0


def describe(pids: Iterable[PartitionId], stored: Mapping[PartitionId, int]) -> str:
    parts = [f"{t}[{p}]" + (f"@{stored[(t, p)]}" if (t, p) in stored else "") for t, p in pids]
    return ", ".join(parts) if parts else "nothing"


class Seeker:
    """Places partitions (where to start), re-reads stored positions and seeks to them."""

    def __init__(
        self,
        kafka: Consumer,
        writer: WriterThread,
        positions: Positions,
        *,
        facts: LogFacts,
        rules: Rules,
        window: Window,
        pending: Pending,
        telemetry: Telemetry,
        flow: FlowControl,
        clock: Callable[[], float],
    ) -> None:
        self._kafka, self._writer, self._positions = kafka, writer, positions
        self._facts, self._rules = facts, rules
        self._window, self._pending = window, pending
        self._telemetry, self._flow, self._clock = telemetry, flow, clock
        self._next_seek_at = 0.0
        self._audited: set[tuple[PartitionId, str, str]] = set()  # halts already audited (once per halt)
        self._opened_seen: int | None = None  # the writer's connections opened, when last looked at
        self._next_recheck_at = 0.0  # after a recheck that could not read the database: not before then
        # Placed partitions whose fetch position the broker refused → where the log diverged when the
        # refusal said it was truncated, and the stored position believed then. Dropped once the
        # partition is positioned or released, or when its row holds another position (an operator's
        # reset): a refusal says nothing about a position moved since.
        self._refusals: dict[PartitionId, _Refusal] = {}

    def stored(self, pids: Sequence[PartitionId]) -> dict[PartitionId, StoredPosition]:
        """Stored positions of `pids`, read on the writer thread. Raises DatabaseFailure."""
        return self._writer.call(lambda target: target.stored_positions(pids))

    def place(self, pids: Sequence[PartitionId]) -> dict[PartitionId, Placement]:
        """Decide where each partition starts, and store and audit what moves (one transaction; read
        again once if a row moved meanwhile). Raises DatabaseFailure."""
        for attempt in (1, 2):
            stored = self.stored(pids)
            placements = self._decide(pids, stored)
            changes = [
                p.change
                for p in placements.values()
                if p.change is not None and (p.halt is None or _halt_key(p.change) not in self._audited)
            ]
            try:
                self._reset(changes)
            except PositionConflict:
                if attempt == 2:
                    raise
                continue
            self._announce(placements)
            return placements
        raise AssertionError("unreachable")  # pragma: no cover

    def _reset(self, changes: list[PositionChange]) -> None:
        if changes:
            self._writer.call(lambda target: target.reset_positions(changes))

    def _decide(
        self, pids: Sequence[PartitionId], stored: Mapping[PartitionId, StoredPosition]
    ) -> dict[PartitionId, Placement]:
        refusals = self._bind_refusals(pids, stored)
        ids = self._facts.topic_ids(topic for topic, _ in pids)
        bounds = self._facts.bounds(pids)
        unplaced = [pid for pid in pids if pid not in stored]
        committed = self._facts.kafka_committed(unplaced) if self._rules.adopt_kafka_offsets else {}
        return {
            pid: place(
                pid,
                Facts(
                    stored.get(pid),
                    ids.get(pid[0]),
                    *bounds.get(pid, (None, None)),
                    committed.get(pid),
                    assigned_at=self._positions.assigned_at(pid),
                    refused=pid in refusals,
                    diverged_at=refusals[pid].point if pid in refusals else None,
                ),
                self._rules,
            )
            for pid in pids
        }

    def _bind_refusals(
        self, pids: Sequence[PartitionId], stored: Mapping[PartitionId, StoredPosition]
    ) -> dict[PartitionId, _Refusal]:
        """The refusals that still apply to `pids`: those whose stored row still holds the position
        believed when the broker refused (dropped otherwise)."""
        applying = {}
        for pid in pids:
            refusal = self._refusals.get(pid)
            if refusal is None:
                continue
            row = stored.get(pid)
            if row is not None and row.offset == refusal.stored:
                applying[pid] = refusal
            else:
                del self._refusals[pid]
        return applying

    def _announce(self, placements: Mapping[PartitionId, Placement]) -> None:
        """One log line, a metric and (already written) an audit row per decision."""
        for (topic, partition), placement in sorted(placements.items()):
            change = placement.change
            if change is None:
                continue
            where = f"{topic}[{partition}]"
            if placement.halt is not None:  # logged once by the halt itself (FlowControl)
                if _halt_key(change) not in self._audited:
                    self._audited.add(_halt_key(change))
                    if change.kind == "gap_halted":
                        self._telemetry.position_gap("halt")
                continue
            old = "no stored position" if change.old is None else f"stored position {change.old.offset}"
            if change.kind == "gap_skipped":
                self._telemetry.position_gap("skip")
                log.warning("%s: %s; starting at %d", where, change.detail, change.new.offset)
            elif change.kind == "log_truncated":
                self._telemetry.position_reset(change.kind)
                log.warning("%s: %s", where, change.detail)
            elif change.kind == "adopted_topic_id":
                log.info(
                    "%s: recorded topic ID %s with stored position %d", where, change.new.topic_id, change.new.offset
                )
            else:
                self._telemetry.position_reset(change.kind)
                old_id = change.old.topic_id if change.old else None
                log.warning("%s: %s (%s; topic ID %s → %s): starting at %d", where, change.kind, old, old_id,
                            change.new.topic_id, change.new.offset)  # fmt: skip

    def forget(self, pids: Iterable[PartitionId], *, place_now: bool = True) -> None:
        """Distrust these positions: drop their buffered records, pause them, and place them again now
        (without `place_now`: at the loop's next step, as for any partition whose position is unknown;
        for a caller that may run inside a rebalance callback)."""
        owned = self._positions.forget(pids)
        self._window.drop(owned)
        self._pending.drop(owned)
        self._flow.pause(owned)
        if place_now:
            self.seek_unknown(now=True)

    def out_of_range(self, pid: PartitionId, message: str) -> None:
        """The broker refused the fetch position (auto.offset.reset = error): place the partition again,
        knowing where its log diverged when the refusal says it was truncated."""
        if pid not in self._positions:
            return
        # A partition not placed yet fetches from a placeholder (consumer/rebalance.py): its refusals
        # say nothing of its position, and are not news.
        placed = pid in self._positions.known()
        if placed and (believed := self._positions.stored(pid)) is not None:
            self._refusals[pid] = _Refusal(point := diverged_at(message), believed)
            if point is not None and point >= 0:
                self._positions.diverged(pid, point)
        log.log(logging.WARNING if placed else logging.DEBUG, "%s[%d]: %s; placing it again", pid[0], pid[1], message)
        self.forget([pid])

    def unreadable(self, pid: PartitionId, offset: int | None, message: str) -> None:
        """The Kafka client could not read a record batch of `pid` at `offset` (consumer/consume_errors.py's
        UNREADABLE): it may read on past it, and the next records it delivers would be past messages never
        written. Halt the partition on its stored position, its buffered records dropped; the caller wrote
        what was read before the batch first, so that position is normally the batch's. Each retry places
        the partition there again and reads on: a fault that clears (a batch damaged in transit) heals by
        itself, one in the log itself halts until an operator moves the position. A partition not placed
        yet reads from a placeholder: nothing of it is accepted, and its placement reads the log again."""
        if pid not in self._positions.known():
            log.debug("%s[%d]: %s (not placed yet: ignored)", pid[0], pid[1], message)
            return
        stored = self._positions.stored(pid)
        at = "" if offset is None or offset < 0 else f" at offset {offset}"
        reason = (
            f"{pid[0]}[{pid[1]}]: the Kafka client could not read the log{at} ({message}); "
            f"halted on the stored position {stored}, so that nothing past messages never read is written: "
            f"a fault in transit heals at the next retry; for a damaged log, "
            f'see "A log the consumer cannot read" in docs/OPERATIONS.md'
        )
        self._positions.halt(pid, reason)
        self._window.drop([pid])
        self._pending.drop([pid])
        self._flow.schedule_retry(Failure(Action.HALT, "systemic", reason))

    def released(self, pids: Iterable[PartitionId]) -> None:
        """Partitions this consumer no longer owns: what it learnt of their logs no longer applies."""
        for pid in pids:
            self._refusals.pop(pid, None)

    def seek_unknown(self, *, now: bool = False, halted: bool = False) -> None:
        """Place and seek every partition whose position is unknown (at most once a second), and with
        `halted` also those halted on their position (at each retry)."""
        pids = self._positions.unknown() + (list(self._positions.halted()) if halted else [])
        if not pids or (not now and not halted and self._clock() < self._next_seek_at):
            return
        self._next_seek_at = self._clock() + SEEK_RETRY_INTERVAL_S
        try:
            placements = self.place(sorted(set(pids)))
        except (DatabaseFailure, PositionConflict) as error:
            self._telemetry.database(ok=not isinstance(error, DatabaseFailure))
            log.warning("cannot place %d partition(s) yet (%s); they stay paused", len(pids), error)
            return
        for pid, placement in placements.items():
            self.apply(pid, placement)

    def apply(self, pid: PartitionId, placement: Placement) -> None:
        """Seek the partition where `placement` says (resuming it unless paused), or halt it."""
        if placement.halt is not None:
            self._positions.halt(pid, placement.halt)
            self._window.drop([pid])
            self._pending.drop([pid])
            self._flow.schedule_retry(Failure(Action.HALT, "systemic", placement.halt))
            return
        if placement.start is None:
            return  # nothing known yet: placed again later
        if not self._seek(seek_target(pid, placement.start, placement.leader_epoch)):
            return
        self._refusals.pop(pid, None)
        self._window.drop([pid])
        self._pending.drop([pid])
        self._positions.sought(pid, placement.start, fetch=placement.start, topic_id=placement.topic_id)
        if not self._flow.paused:
            self._kafka.resume([TopicPartition(pid[0], pid[1])])
        log.info("partition %s[%d] positioned at %d", pid[0], pid[1], placement.start)

    def _seek(self, partition: TopicPartition) -> bool:
        """Move the fetch position. A partition whose fetch failed (out of range: auto.offset.reset = error)
        or has not started refuses a seek (erroneous state): it is assigned again at the offset instead;
        or, for a position with a leader epoch (which only a seek has checked), at the placeholder,
        paused, and sought once its fetch started (False: placed again within a second)."""
        try:
            self._kafka.seek(partition)
            return True
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._STATE:
                log.debug("seek %s not possible yet: %s", partition, exc)
                return False
        checked = partition.leader_epoch is not None
        try:
            self._kafka.incremental_unassign([TopicPartition(partition.topic, partition.partition)])
            if checked:
                placeholder = TopicPartition(partition.topic, partition.partition, UNPLACED_OFFSET)
                self._kafka.incremental_assign([placeholder])
                self._kafka.pause([placeholder])
                return False
            self._kafka.incremental_assign([partition])
            if self._flow.paused:
                self._kafka.pause([partition])
            return True
        except KafkaException as exc:
            log.debug("re-assigning %s not possible yet: %s", partition, exc)
            return False

    def recheck_after_reconnect(self) -> None:
        """Once the writer's connection was opened again (the server restarted, failed over or dropped
        it), re-read every stored position before trusting it: a database crash may have lost commits this
        consumer made (durability = replay, a standby that lacks them), of partitions no write touches
        now too. Those behind are read again (`behind`, `forget`). Call with no write in flight."""
        opened = self._writer.connections_opened()
        if self._opened_seen is None or opened == self._opened_seen:
            self._opened_seen = opened
            return
        if self._clock() < self._next_recheck_at:
            return
        try:
            behind = self.behind()
        except DatabaseFailure:  # unreachable again: looked at again in a while, not at every turn of
            self._next_recheck_at = self._clock() + SEEK_RETRY_INTERVAL_S  # the loop (each a connection attempt)
            return
        self._opened_seen = opened
        if behind:
            self.forget(behind)

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
            if (believed := self._positions.stored(pid)) is not None
            and (pid not in stored or stored[pid].offset < believed)
        ]  # fmt: skip
        self._positions.committed({pid: pos.offset for pid, pos in stored.items() if pid not in behind})
        if behind:
            log.warning("stored positions went backwards for %s (the database lost commits): reading them again",
                        describe(behind, {pid: pos.offset for pid, pos in stored.items()}))  # fmt: skip
        return behind


@dataclass(frozen=True)
class _Refusal:
    """A fetch position the broker refused: where the log diverged (None: not a truncation), and the
    stored position believed then (the refusal applies while the row still holds it)."""

    point: int | None
    stored: int


def seek_target(pid: PartitionId, offset: int, leader_epoch: int | None) -> TopicPartition:
    """Where a partition is sought or assigned; with the leader epoch of the record before `offset`
    when known, so that librdkafka checks it with the broker first (KIP-320) and refuses a position in
    a log truncated below it (consumer/placement.py)."""
    return TopicPartition(pid[0], pid[1], offset, leader_epoch=-1 if leader_epoch is None else leader_epoch)


def _halt_key(change: PositionChange) -> tuple[PartitionId, str, str]:
    """What makes a halt the same halt: the partition, the kind, the stored row it is about."""
    return change.pid, change.kind, repr(change.old)
