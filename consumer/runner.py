"""The run loop: consume → buffer → flush, with every Kafka call on one thread.

Everything that talks to the Kafka consumer (consume, pause, resume, seek, commit) happens on this
thread; rebalance callbacks run inside `consume()`, so they see the loop between two steps. The one
other thread is the BackgroundWriter's, which only writes to PostgreSQL (window N is written while
window N+1 is consumed and decoded); the loop settles each write before the next one and before it
touches the database itself. The loop is a readable sequence; policy lives in small pieces:
`Window` (when to flush), `Assignment` (what we own, from where), `FlowControl` (paused, retrying,
halted), `Positioner` (back to the stored positions), `DeadLetterBreaker` (behind the sink), and the
pipeline (what a flush does).

Failures of a flush, by class:
  transient (database down, deadlock, dead-letter topic unavailable) → pause every partition, keep
      polling (group membership holds), retry the same records with backoff;
  systemic (schema, privileges, unknown) or breaker open → the same, plus "halted": not ready, an
      alert metric, one clear log line; retried slowly, or exit if `exit_on_halt`;
  a stale position (compare-and-set refused, or stored positions that went backwards) → re-read the
      stored position, seek there, go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_STORED,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

from consumer.assignment import Assignment
from consumer.background import BackgroundWriter, Outcome
from consumer.flow import FlowControl
from consumer.messages import to_record
from consumer.outcomes import BreakerOpen, HaltingReject
from consumer.positions import Positioner, describe
from consumer.telemetry import Telemetry
from consumer.window import Trigger, Window, WindowPolicy
from pipeline import failpoints
from pipeline.errors import FailureClass
from pipeline.offsets import PositionConflict
from pipeline.records import Batch, PartitionId, Record, partition_spans
from pipeline.service import Pipeline
from pipeline.writer import FlushResult, RejectSink, RejectSinkError, WriteError

log = logging.getLogger("microbatch.runner")

EXIT_OK = 0
EXIT_UNCLEAN = 1
EXIT_HALTED = 3
POLL_INTERVAL_S = 0.1
HOUSEKEEPING_INTERVAL_S = 2.0
IDLE_PING_INTERVAL_S = 5.0
# After submitting a write, the loop waits (at most this long) until the writer has sent its rows and
# statement before it decodes more (see BackgroundWriter.wait_for_handover). Measured per 5,000-event
# flush: BEGIN + compare-and-set 2.2 → 0.9 ms, COPY 8.7 → 5.6 ms; the statement, which decoding now
# overlaps, about 2 ms slower.
HANDOVER_WAIT_S = 0.1


@dataclass
class LoopOptions:
    """The run loop's knobs (see Settings for their meaning and defaults)."""

    topics: Sequence[str]
    policy: WindowPolicy
    consume_batch: int = 1000
    auto_offset_reset: str = "earliest"
    shutdown_timeout_s: float = 30.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    halted_retry_s: float = 15.0
    exit_on_halt: bool = False
    overlap_writes: bool = True


class Runner:
    """Owns the loop; `run()` returns the process exit code."""

    def __init__(
        self,
        kafka: Consumer,
        pipeline: Pipeline,
        sink: RejectSink,
        options: LoopOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.kafka = kafka
        self.pipeline = pipeline
        self.sink = sink
        self.options = options
        self.clock = clock
        self.telemetry = telemetry or Telemetry()
        self.window = Window(options.policy, clock)
        self.assignment = Assignment()
        self.flushes = 0
        self.written = 0
        self.duplicates = 0  # producer duplicates skipped (the dedupe key was already written)
        self._inflight: list[Record] | None = None  # a closed window not yet (fully) written
        self._trigger = Trigger.RECORDS
        self.flow = FlowControl(
            kafka, self.assignment, self.telemetry, clock, retry_initial_s=options.retry_initial_s,
            retry_max_s=options.retry_max_s, halted_retry_s=options.halted_retry_s,
        )  # fmt: skip
        self.positions = Positioner(
            kafka, pipeline, self.assignment, window=self.window, telemetry=self.telemetry, flow=self.flow,
            clock=clock, auto_offset_reset=options.auto_offset_reset,
        )  # fmt: skip
        self._next_housekeeping = 0.0
        self._last_db_contact = clock()
        self._stopping = False
        self._closing = False
        self._exit: int | None = None
        self._writer = BackgroundWriter(pipeline, sink)

    # -- public ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish (signal-handler safe): flush, commit, leave the group."""
        self._stopping = True

    def run(self) -> int:
        """Consume until stopped; returns EXIT_OK when everything buffered was written."""
        self.kafka.subscribe(
            list(self.options.topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        try:
            while not self._stopping and self._exit is None:
                self.step()
            return self._exit if self._exit is not None else self._shutdown()
        finally:
            self._closing = True
            self._settle()
            self.kafka.close()
            self._writer.close()

    def step(self) -> None:
        """One turn: seek unknown positions, consume, buffer, flush when a window closes or a retry is due."""
        self.telemetry.beat()
        if self._writer.finished:
            self._settle()  # learn promptly how the background write ended (a failure pauses consumption)
        self._apply_commits()
        if self.assignment.unknown():
            self._settle()
            self.positions.seek_unknown()
        wanted = min(self.options.consume_batch, self.window.room) if not self.flow.waiting else 1
        messages = self.kafka.consume(wanted, self._poll_timeout())
        if messages:
            failpoints.hit("after_consume")
        self._buffer(messages)
        if self.flow.waiting:
            if self.flow.due():
                self._flush()
        elif (trigger := self.window.ready()) is not None:
            if self.options.overlap_writes:
                self._dispatch(trigger)
            else:
                self._close_window(trigger)
                self._flush()
        self._housekeeping()

    # -- buffering -------------------------------------------------------------------------------

    def _poll_timeout(self) -> float:
        if self.flow.waiting:
            return min(POLL_INTERVAL_S, self.flow.seconds_to_retry())
        left = self.window.time_left()
        return POLL_INTERVAL_S if left is None else min(POLL_INTERVAL_S, left)

    def _buffer(self, messages: Sequence[Message]) -> None:
        """Turn a consume() batch into records, keep those that belong in the window (whole-batch calls)."""
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(to_record(message))
            elif error.fatal():
                raise KafkaException(error)
            else:
                log.warning("kafka: %s", error.str())
        accepted = self.assignment.accept(records)
        if len(accepted) < len(records) and log.isEnabledFor(logging.DEBUG):
            log.debug("dropped %d record(s): not owned, position unknown, or stale", len(records) - len(accepted))
        self.telemetry.consumed(accepted, self.window.extend(accepted))

    def _close_window(self, trigger: Trigger) -> None:
        records = self.window.take()
        if self._inflight:
            records = sorted([*self._inflight, *records], key=lambda r: (r.topic, r.partition, r.offset))
        self._inflight = records
        self._trigger = trigger

    # -- flushing in the background (the normal path) ---------------------------------------------

    def _dispatch(self, trigger: Trigger) -> None:
        """Close the window and write it in the background, doing all per-record work while the
        previous write is still in flight: PostgreSQL should wait for nothing but the hand-over."""
        self._close_window(trigger)
        records = self._unwritten(self._inflight or [])
        decoded = self.pipeline.prepare(records)  # decode + COPY encoding, overlapping the write in flight
        spans = partition_spans(records)
        outcome = self._writer.wait()
        self._apply_commits()
        if outcome is not None and (outcome.error is not None or outcome.result is None):
            self._conclude(outcome)  # failed: ours wait behind it in self._inflight, retried in order
            return
        if not self._still_unwritten(spans):  # positions moved meanwhile (rare): start over from what is left
            records = self._unwritten(self._inflight or [])
            decoded = self.pipeline.prepare(records)
            spans = partition_spans(records)
        self._inflight = None
        if records:
            expected = self.assignment.expected(spans)
            positions = {pid: next_position for pid, (_, next_position) in spans.items()}
            self._writer.submit(Batch(records, expected, positions), decoded, trigger)
            self._writer.wait_for_handover(HANDOVER_WAIT_S)
        if outcome is not None:
            self._conclude(outcome)  # the previous write's accounting, once the next one is on its way

    def _still_unwritten(self, spans: dict[PartitionId, tuple[int, int]]) -> bool:
        """True when every partition of a window (first offset per partition) is still ours to write."""
        unknown = set(self.assignment.unknown())
        for pid, (first, _) in spans.items():
            if pid not in self.assignment or pid in unknown:
                return False
            stored = self.assignment.stored(pid)
            if stored is not None and first < stored:
                return False
        return True

    def _settle(self) -> bool:
        """Wait for the background write and apply its outcome. False when it failed (now being retried)."""
        outcome = self._writer.wait()
        self._apply_commits()
        return self._conclude(outcome)

    def _conclude(self, outcome: Outcome | None) -> bool:
        """Account for a background write that ended (its commits already applied); on failure, retry."""
        if outcome is None:
            return True
        if outcome.error is None and outcome.result is not None:
            self._flushed(outcome.result, outcome.records, outcome.seconds, outcome.trigger)
            return True
        failure = outcome.error.failure.value if isinstance(outcome.error, WriteError) else "transient"
        sqlstate = outcome.error.sqlstate if isinstance(outcome.error, WriteError) else None
        self.telemetry.flush_failed(outcome.trigger.value, failure, sqlstate, retrying=True, seconds=outcome.seconds)
        # Its records go back ahead of anything newer; the synchronous path classifies and retries.
        self._inflight = sorted(
            [*outcome.records, *(self._inflight or [])], key=lambda r: (r.topic, r.partition, r.offset)
        )
        self._trigger = outcome.trigger
        self._flush()
        return not self._inflight and not self.flow.waiting and self._exit is None

    def _apply_commits(self) -> None:
        for positions in self._writer.commits():
            self._committed(positions)

    # -- flushing on the loop thread (retries, rebalances, shutdown) ----------------------------------

    def _flush(self, *, retry: bool = True) -> bool:
        """Write the closed window; True when all of it is written. On failure, schedule a retry."""
        self._settle()
        if self.flow.waiting and self._inflight and not self._refresh_positions():
            return False
        # Always from self._inflight: forgetting a partition's position removes its records there.
        records = self._unwritten(self._inflight or [])
        while records:
            started = self.clock()
            batch = Batch(records, self.assignment.expected({r.partition_id for r in records}))
            try:
                result = self.pipeline.write(batch, self.sink, on_commit=self._committed)
            except PositionConflict as conflict:
                self.telemetry.fenced()
                log.warning("fenced: stored position moved for %s; re-reading and seeking", conflict.partitions)
                self._forget_positions(conflict.partitions)
                records = self._unwritten(self._inflight or [])
                continue
            except HaltingReject as halt:
                log.error("%s", halt)
                self._fail(records, "systemic", None, started, retrying=False)
                self._exit = EXIT_HALTED
                return False
            except BreakerOpen as breaker:
                self._fail(records, "dead_letter", None, started, retrying=retry)
                self._schedule_retry(FailureClass.SYSTEMIC, f"dead-letter circuit breaker open: {breaker}", retry)
                return False
            except RejectSinkError as error:
                self._fail(records, "dead_letter", None, started, retrying=retry)
                self._schedule_retry(FailureClass.TRANSIENT, str(error), retry)
                return False
            except WriteError as error:
                self._fail(records, error.failure.value, error.sqlstate, started, retrying=retry)
                reason = f"{error} (SQLSTATE {error.sqlstate})" if error.sqlstate else str(error)
                self._schedule_retry(error.failure, reason, retry)
                return False
            self._flushed(result, records, self.clock() - started, self._trigger)
            records = []
        self._inflight = None
        self.flow.recovered()
        return True

    def _fail(
        self, records: list[Record], failure: str, sqlstate: str | None, started: float, *, retrying: bool
    ) -> None:
        self._inflight = self._unwritten(records)
        self.telemetry.flush_failed(
            self._trigger.value, failure, sqlstate, retrying=retrying, seconds=self.clock() - started
        )

    def _unwritten(self, records: Sequence[Record]) -> list[Record]:
        """Records still to write: owned, position known, not behind the stored position."""
        unknown = set(self.assignment.unknown())
        kept = []
        for record in records:
            pid = record.partition_id
            if pid not in self.assignment or pid in unknown:
                continue
            stored = self.assignment.stored(pid)
            if stored is None or record.offset >= stored:
                kept.append(record)
        return kept

    def _committed(self, positions: dict[PartitionId, int]) -> None:
        """After every COMMIT: remember the positions and tell Kafka (advisory, for lag tools)."""
        self.assignment.committed(positions)
        self._last_db_contact = self.clock()
        failpoints.hit("after_db_commit")
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]
        if offsets:
            try:
                self.kafka.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:
                log.debug("advisory kafka commit failed: %s", exc)

    def _flushed(self, result: FlushResult, records: list[Record], seconds: float, trigger: Trigger) -> None:
        self.flushes += 1
        self.written += result.inserted
        self.duplicates += result.duplicates
        self.telemetry.flushed(trigger.value, result, records, seconds, self.pipeline.spec.raw.table)
        if result.isolated:
            log.info(
                "isolated %d rejected row(s) among %d records with %d statements, %d savepoints, %d transaction(s)",
                sum(1 for r in result.rejections if r.sqlstate), len(records), result.statements, result.savepoints,
                result.transactions,
            )  # fmt: skip
        log.debug(
            "flushed %d records (%s) in %.3f s: %d new, %d duplicates, %d rejected",
            len(records), trigger.value, seconds, result.inserted, result.duplicates, len(result.rejections),
        )  # fmt: skip

    # -- positions and retries (the state lives in Positioner and FlowControl) --------------------

    def _schedule_retry(self, failure: FailureClass, reason: str, retry: bool) -> None:
        if retry:
            self.flow.schedule_retry(failure, reason)
            if failure is not FailureClass.TRANSIENT and self.options.exit_on_halt:
                self._exit = EXIT_HALTED

    def _forget_positions(self, pids: Iterable[PartitionId]) -> None:
        """Our copy of these positions is wrong: drop their records, pause, re-read and seek."""
        self._settle()
        owned = self.positions.forget(pids)
        if self._inflight:
            self._inflight = [r for r in self._inflight if r.partition_id not in owned] or None
        self.positions.seek_unknown(now=True)

    def _refresh_positions(self) -> bool:
        """Before a retry: re-read stored positions; re-read the data of any that went backwards."""
        try:
            behind = self.positions.behind()
        except WriteError as error:
            self._schedule_retry(error.failure, str(error), retry=True)
            return False
        if behind:
            self._forget_positions(behind)
        return True

    def _housekeeping(self) -> None:
        """Every few seconds: gauges (buffer, lag) and, when idle, a database reachability check."""
        now = self.clock()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
        inflight = self._inflight or []
        self.telemetry.buffered(len(self.window) + len(inflight), self.window.bytes + sum(r.size for r in inflight))
        owned = self.assignment.partitions()
        high = {}
        for topic, partition in owned:
            try:
                _, high[(topic, partition)] = self.kafka.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
        self.telemetry.lag({pid: self.assignment.stored(pid) for pid in owned}, high)
        if not self.flow.waiting and not self._writer.busy and now - self._last_db_contact > IDLE_PING_INTERVAL_S:
            self._last_db_contact = now
            self.telemetry.database(ok=self.pipeline.ping())

    # -- rebalance callbacks (run inside consume(); must never raise) -----------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            failpoints.hit("in_assign")
            self._settle()
            pids = [(tp.topic, tp.partition) for tp in partitions]
            try:
                stored, known = self.pipeline.stored_positions(pids), True
                self.telemetry.database(ok=True)
            except WriteError as error:
                log.warning("assigned %d partition(s) while the database is unreachable (%s): paused", len(pids), error)
                stored, known = {}, False
                self.telemetry.database(ok=False)
            assigned = []
            for pid in pids:
                position = stored.get(pid)
                self.assignment.assign(pid, position, known=known)
                offset = position if known and position is not None else OFFSET_STORED
                assigned.append(TopicPartition(pid[0], pid[1], offset))
            consumer.incremental_assign(assigned)
            if known:
                self.positions.announce_kafka_starts([pid for pid in pids if stored.get(pid) is None])
            # librdkafka keeps a partition's pause flag across unassign/assign (and a pause racing a
            # rebalance can stick): state it explicitly for every partition we are given.
            if assigned and (self.flow.paused or not known):
                consumer.pause(assigned)
            elif assigned:
                consumer.resume(assigned)
            self.telemetry.rebalance("assign", len(self.assignment))
            if pids:
                log.info("assigned %s", describe(pids, stored))
        except Exception:
            log.exception("on_assign failed; partitions will be re-read from PostgreSQL")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            failpoints.hit("in_revoke")
            self._settle()
            pids = [(tp.topic, tp.partition) for tp in partitions]
            revoked = set(pids)
            if not self._closing and not self.flow.waiting and self.window.partitions() & revoked:
                # Flush what we have while we still own it (one attempt: no retries inside a rebalance).
                self._close_window(Trigger.REVOKE)
                self._flush(retry=False)
            self._release(revoked)
            self.telemetry.rebalance("revoke", len(self.assignment))
            if pids:
                log.info("revoked %s", describe(pids, {}))
        except Exception:
            log.exception("on_revoke failed; the partitions' buffers were dropped")
            self._release({(tp.topic, tp.partition) for tp in partitions})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._settle()
            pids = {(tp.topic, tp.partition) for tp in partitions}
            self._release(pids)
            self.telemetry.rebalance("lost", len(self.assignment))
            log.warning("lost %s (session expired): buffers dropped, nothing committed", describe(sorted(pids), {}))
        except Exception:
            log.exception("on_lost failed")

    def _release(self, pids: set[PartitionId]) -> None:
        """Forget partitions we no longer own: their buffered records and positions."""
        self.window.drop(pids)
        if self._inflight:
            self._inflight = [r for r in self._inflight if r.partition_id not in pids] or None
        self.assignment.release(pids)
        self.telemetry.released(pids)
        if not self._inflight and self.flow.waiting and self.flow.halted is None:
            self.flow.recovered()  # nothing left to retry

    # -- shutdown ----------------------------------------------------------------------------------

    def _shutdown(self) -> int:
        """Flush everything buffered within the deadline; EXIT_OK when it all got written."""
        deadline = self.clock() + self.options.shutdown_timeout_s
        self._settle()
        if len(self.window):
            self._close_window(Trigger.SHUTDOWN)
        while self._inflight and self.clock() < deadline and self._exit is None:
            if self.flow.waiting and not self.flow.due():
                # Keep polling (group membership) but buffer nothing new: we are leaving.
                self.kafka.consume(1, min(POLL_INTERVAL_S, self.flow.seconds_to_retry()))
                continue
            self._flush()
        if self._exit is not None:
            return self._exit
        if self._inflight:
            log.error("shutdown deadline passed with %d records unwritten; they will be re-read on restart",
                      len(self._inflight))  # fmt: skip
            return EXIT_UNCLEAN
        log.info("shut down cleanly: %d flushes, %d rows written, %d duplicates skipped", self.flushes, self.written,
                 self.duplicates)  # fmt: skip
        return EXIT_OK
