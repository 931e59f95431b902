"""Closed windows on their way to PostgreSQL: pending, handed to the writer thread, accounted for.

`Handover` owns the records between the window and the database: `Pending` (closed, not yet handed
over), the one write in flight (`WriterThread`), and what comes back: the positions each COMMIT
stored, and the outcome (counted, or a failure that gives the records back to pending and is acted
on by the table in consumer.failures). A write, whatever started it, goes one way:

  1. the records still unwritten (`Positions.unwritten`) are decoded and encoded (`Preparer`),
     while the previous write still runs;
  2. the previous write's outcome is accounted for; if it failed, ours wait behind its records;
  3. `Positions` makes the batch (the records with the positions they move) and the writer thread
     writes it: one transaction (compare-and-set, COPY, insert and upserts, dead letters, COMMIT);
  4. each COMMIT's positions are applied to `Positions` and told to Kafka (advisory, at most once a second).

Loop thread only (the writer thread is reached through WriterThread).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.failures import Action, Failure, classify_failure
from consumer.flow import FlowControl
from consumer.pending import Pending
from consumer.positions import Positions
from consumer.seeking import Seeker
from consumer.telemetry import Telemetry
from consumer.window import Trigger, Window
from consumer.writer_thread import Outcome, StillWriting, WriterThread
from pipeline.decode import DecodedBatch
from pipeline.errors import DatabaseFailure
from pipeline.prepare import Preparer
from pipeline.records import Batch, PartitionId, Record, partition_spans, records_bytes

log = logging.getLogger("microbatch.loop")
EXIT_HALTED = 3
# After handing a write over, the loop waits (at most this long) until the writer has sent its rows and
# statement before it decodes more (WriterThread.wait_for_handover). Measured per 5,000-event write:
# BEGIN + compare-and-set 2.2 → 0.9 ms, COPY 8.7 → 5.6 ms; the statement, which decoding overlaps, ~2 ms slower.
HANDOVER_WAIT_S = 0.1
# The advisory Kafka commit goes at most this often, with the latest stored position of each partition. One
# OffsetCommit per COMMIT flooded the group coordinator when bad rows made a bisection commit thousands of small
# transactions per window: the group's heartbeats queued behind them until the session expired (the
# partitions lost mid-window), and close() waited on them past the shutdown deadline.
ADVISORY_INTERVAL_S = 1.0
CANCEL_WAIT_S = 2.0  # after asking PostgreSQL to cancel a write at the shutdown deadline


class Handover:
    """Pending records, the write in flight, and the accounting of both (see the module docstring)."""

    def __init__(
        self,
        kafka: Consumer,
        preparer: Preparer,
        writer: WriterThread,
        *,
        pending: Pending,
        positions: Positions,
        seeker: Seeker,
        flow: FlowControl,
        telemetry: Telemetry,
        raw_table: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kafka, self._preparer, self._writer, self._clock = kafka, preparer, writer, clock
        self.pending, self._positions, self._seeker = pending, positions, seeker
        self._flow, self._telemetry = flow, telemetry
        self._raw_table = raw_table
        self.flushes = self.written = self.duplicates = 0
        self.closing = False  # leaving: a failed write is not retried any more
        self.exit_code: int | None = None  # set when the loop must stop (a rejection without a dead-letter topic)
        self.on_commit: Callable[[], None] = lambda: None  # told after each COMMIT (the database answered)
        self.deadline: float | None = None  # monotonic time by which waits end (set at shutdown)
        self.cut = False  # a write was left unfinished at the deadline
        self._advisory: dict[PartitionId, int] = {}  # stored positions Kafka was not told yet (`advise`)
        self._advised_at = float("-inf")
        self._submitted: tuple[Batch, int] | None = None  # the write in flight, with its records' bytes
        self.retrying = False  # inside `retry`: paused partitions resume from there only
        # Asked before each write, with the partitions of its records (all consumed by then): of those
        # it cannot show are read from their topic's current incarnation, it leaves in the write only
        # what an earlier answer proved, and has them placed again (IncarnationWatch.confirm).
        # Set only for pipelines whose rows carry the topic ID; None: nothing asked.
        self.confirm: Callable[[Iterable[PartitionId]], None] | None = None

    def unwritten(self) -> int:
        """Pending records still to write."""
        return len(self._positions.unwritten(self.pending.records))

    def hand_over(self, *, wait: bool) -> None:
        """Write everything pending (steps 1-3 of the module docstring); with `wait`, until it ended."""
        records = self._positions.unwritten(self.pending.records)
        decoded = self._preparer.prepare(records, self._positions.topic_ids())  # 1.
        if not self.settle():  # 2.
            return
        self._confirm()
        if len(unwritten := self._positions.unwritten(self.pending.records)) != len(records):
            records, decoded = unwritten, self._preparer.prepare(unwritten, self._positions.topic_ids())  # (rare)
        trigger, size = self._take(records)
        if not records:
            if self._flow.waiting:
                self._flow.recovered()  # nothing is left to retry
            return
        self._submit(records, decoded, trigger, size)  # 3.
        self._writer.wait_for_handover(HANDOVER_WAIT_S)
        if wait:
            self.settle()

    def settle(self) -> bool:
        """Wait for the write in flight (if any) and account for it; False when it failed. After a
        `deadline` (shutdown), wait until then only: a write still running is cancelled, and if it
        still does not end it is left behind (`cut`)."""
        if self.cut:
            return False  # left behind at the deadline: nothing more to wait for
        if self.deadline is None:
            return self._conclude(self._writer.wait(), retry=not self.closing)
        try:  # the cancel and its wait fit inside the deadline too
            outcome = self._writer.wait(max(0.0, self.deadline - CANCEL_WAIT_S - time.monotonic()))
        except StillWriting:
            self._writer.cancel()
            try:
                outcome = self._writer.wait(CANCEL_WAIT_S)
            except StillWriting:
                log.error("shutdown: the write in flight did not end in time; leaving it (it rolls back)")
                self.cut = True
                return False
        return self._conclude(outcome, retry=not self.closing)

    def write_now(self, window: Window, trigger: Trigger) -> None:
        """Close `window` and write everything pending, once, waiting for the outcome (a rebalance
        callback's write: it is not retried in there). A failed write's records are pending again and
        its retry is scheduled as any write's, so that the partitions kept write them after the
        callback, not when their next window closes. Whatever raises before the write is handed over
        leaves every record pending: a kept partition's buffer dropped while its fetch position stays
        ahead would let the next write store a position past records never written."""
        self.settle()
        if len(window):
            self.pending.add_window(window, trigger)
        self._confirm()
        records = self._positions.unwritten(self.pending.records)
        if not records:
            self._take(records)
            return
        decoded = self._preparer.prepare(records, self._positions.topic_ids())
        trigger, size = self._take(records)
        try:
            self._submit(records, decoded, trigger, size)
        except BaseException:
            self.pending.give_back(records, trigger)  # nothing was handed over
            raise
        self._conclude(self._writer.wait(), retry=not self.closing)

    def _confirm(self) -> None:
        """Ask `confirm` about the partitions of the records about to be written (none: nothing asked)."""
        if self.confirm is not None and (records := self._positions.unwritten(self.pending.records)):
            self.confirm(partition_spans(records))

    def _take(self, records: list[Record]) -> tuple[Trigger, int]:
        """Empty what is pending, of which `records` are written: the trigger, and their bytes (the
        windows' own count when all of it is written, as it mostly is)."""
        size = self.pending.bytes if len(records) == len(self.pending) else records_bytes(records)
        return self.pending.take()[1], size

    def _submit(self, records: list[Record], decoded: DecodedBatch, trigger: Trigger, size: int) -> None:
        batch = self._positions.batch(records)
        self._submitted = (batch, size)
        self._writer.submit(batch, decoded, trigger)

    def retry(self) -> None:
        """The retry is due: place the partitions halted on their position again (an operator may have
        reset them), re-read the stored positions (the database may have lost or kept commits), write."""
        self.retrying = True
        try:
            self._retry()
        finally:
            self.retrying = False

    def _retry(self) -> None:
        if not self.settle():  # a write in flight first (a halt can be decided while one runs)
            return
        self._seeker.seek_unknown(halted=True)
        if halts := self._positions.halted():
            self._flow.schedule_retry(Failure(Action.HALT, "systemic", next(iter(halts.values()))))
            return
        try:
            behind = self._seeker.behind()
        except DatabaseFailure as error:
            self._flow.schedule_retry(classify_failure(error))
            return
        if behind:
            self._seeker.forget(behind)
        self.hand_over(wait=True)

    def _conclude(self, outcome: Outcome | None, *, retry: bool) -> bool:
        """Account for a write that ended: its commits and metrics, or its failure. False when it failed."""
        self.apply_commits()
        if outcome is None:
            return True
        records = outcome.batch.records
        submitted, self._submitted = self._submitted, None
        if outcome.ok and outcome.result is not None:
            result = outcome.result
            self.flushes, self.written = self.flushes + 1, self.written + result.inserted
            self.duplicates += result.duplicates
            size = submitted[1] if submitted is not None and submitted[0] is outcome.batch else records_bytes(records)
            self._telemetry.flushed(outcome.trigger.value, result, records=len(records), size=size,
                                    seconds=outcome.seconds, raw_table=self._raw_table)  # fmt: skip
            if result.bisected:
                log.info(
                    "bisection isolated %d rejected row(s) among %d records with %d statements, %d savepoints, "
                    "%d transaction(s)", sum(1 for r in result.rejections if r.sqlstate), len(records),
                    result.statements, result.savepoints, result.transactions,
                )  # fmt: skip
            if self._flow.waiting and not self.pending.records:
                self._flow.recovered()  # the retry succeeded
            return True
        assert outcome.error is not None  # noqa: S101 - an outcome is a result or an error
        failure = classify_failure(outcome.error)
        self.pending.give_back(self._positions.unwritten(records), outcome.trigger)
        if failure.action is Action.REPOSITION:
            self._telemetry.fenced()
            log.warning("fenced: stored position moved for %s; re-reading and seeking", failure.partitions)
            self._seeker.forget(failure.partitions)
            if self.pending.records:  # the other partitions' records: written now, not when new ones arrive
                self._flow.retry_now()
            return False
        retrying = retry and failure.action is not Action.EXIT
        self._telemetry.flush_failed(outcome.trigger.value, failure.label, failure.sqlstate, retrying=retrying,
                                     seconds=outcome.seconds)  # fmt: skip
        if failure.action is Action.EXIT:
            log.error("%s", failure.reason)
            self.exit_code = EXIT_HALTED
        elif retrying:
            self._flow.schedule_retry(failure)
        return False

    def apply_commits(self) -> None:
        """4. Each COMMIT's positions: remembered, and told to Kafka (advisory: lag tools read it), the latest
        of each partition, at most once per ADVISORY_INTERVAL_S."""
        for positions in self._writer.commits():
            self._positions.committed(positions)
            self.on_commit()
            # Only partitions still owned: a write that ended after its partition was released must not
            # tell Kafka an old position once another member owns it.
            self._advisory.update({pid: offset for pid, offset in positions.items() if pid in self._positions})
        if self._advisory and self._clock() - self._advised_at >= ADVISORY_INTERVAL_S:
            self.advise()

    def advise(self) -> None:
        """Tell Kafka the stored positions it was not told yet, in one asynchronous commit. Advisory: placement
        trusts the stored positions; a Kafka commit only ever seeds a partition with no stored row, when
        `adopt_kafka_offsets` is set. It is sent after the COMMIT that stored a row returned; with durability =
        replay that COMMIT may not be durable yet, which is why replay refuses `adopt_kafka_offsets`."""
        if not self._advisory:
            return
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in self._advisory.items()]
        self._advisory.clear()
        self._advised_at = self._clock()
        try:
            self._kafka.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.debug("advisory kafka commit failed: %s", exc)

    def release(self, window: Window, pids: set[PartitionId]) -> None:
        """Forget partitions no longer owned: their buffered records and positions. What was stored for them
        is told to Kafka first: their next owner may have nothing to write for a while (lag tools read it)."""
        self.advise()
        window.drop(pids)
        self.pending.drop(pids)
        self._positions.release(pids)
        self._telemetry.released(pids)
        if not self.pending.records and self._flow.waiting and self._flow.halt is None:
            # Nothing left to write: retry now rather than resume here, so that the partitions resume
            # where they always do, after the topic IDs were checked (consumer/incarnations.py).
            self._flow.retry_now()
