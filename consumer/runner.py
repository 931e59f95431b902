"""The run loop: consume → buffer → flush, on one thread.

Everything that talks to the Kafka consumer (consume, pause, resume, seek, commit) happens on this
thread; rebalance callbacks run inside `consume()`, so they see the loop between two steps, never
in the middle of a flush. The loop is a readable sequence; policy lives in small pure pieces:
`Window` (when to flush), `Assignment` (what we own, from where), `Backoff` (when to retry), and
the pipeline (what a flush does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_STORED,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

from consumer.assignment import Assignment
from consumer.backoff import Backoff
from consumer.window import Trigger, Window, WindowPolicy
from pipeline.errors import FailureClass
from pipeline.offsets import PositionConflict
from pipeline.records import Batch, PartitionId, Record
from pipeline.service import Pipeline
from pipeline.writer import FlushResult, RejectSink, RejectSinkError, WriteError

log = logging.getLogger("microbatch.runner")

EXIT_OK = 0
EXIT_UNCLEAN = 1
EXIT_HALTED = 2
POLL_INTERVAL_S = 0.1
SEEK_RETRY_INTERVAL_S = 1.0


class HaltingReject(RejectSinkError):
    """The sink refuses to let a rejected record pass: stop the consumer (no dead-letter topic)."""


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
    systemic_retry_max_s: float = 30.0


@dataclass
class LoopState:
    """What an observer (metrics, health) may read; written only by the loop thread."""

    flushes: int = 0
    written: int = 0
    rejected: int = 0
    last_flush_at: float | None = None
    paused: bool = False
    halted: str | None = None
    retrying: str | None = None
    rebalances: dict[str, int] = field(default_factory=lambda: {"assign": 0, "revoke": 0, "lost": 0})
    fenced: int = 0


def to_record(message: Message) -> Record:
    """A Kafka message as plain data (the pipeline never sees confluent_kafka types)."""
    kind, stamp = message.timestamp()
    headers = message.headers()
    return Record(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=message.key(),
        value=message.value(),
        headers=_headers(headers) if headers else (),
        timestamp_ms=stamp if kind != 0 else None,
    )


def _headers(headers: object) -> tuple[tuple[str, bytes | None], ...]:
    """Kafka headers as (name, bytes) pairs; librdkafka may hand out a list of pairs."""
    pairs = headers.items() if isinstance(headers, dict) else headers
    assert isinstance(pairs, Iterable)  # noqa: S101 - the binding returns a list or dict
    return tuple((str(name), value.encode() if isinstance(value, str) else value) for name, value in pairs)


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
        on_flush: Callable[[Trigger, FlushResult, int], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.pipeline = pipeline
        self.sink = sink
        self.options = options
        self.clock = clock
        self.on_flush = on_flush
        self.window = Window(options.policy, clock)
        self.assignment = Assignment()
        self.state = LoopState()
        self._inflight: list[Record] | None = None  # a closed window not yet written
        self._trigger = Trigger.RECORDS
        self._retry_at: float | None = None
        self._backoff = Backoff(options.retry_initial_s, options.retry_max_s)
        self._next_seek_at = 0.0
        self._stopping = False
        self._closing = False
        self._exit: int | None = None

    # -- public ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish (signal-handler safe): flush, commit, leave the group."""
        self._stopping = True

    def run(self) -> int:
        """Consume until stopped; returns EXIT_OK when everything buffered was written."""
        self.kafka.subscribe(
            list(self.options.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not self._stopping and self._exit is None:
                self.step()
            return self._exit if self._exit is not None else self._shutdown()
        finally:
            self._closing = True
            self.kafka.close()

    def step(self) -> None:
        """One turn: fix unknown positions, consume, buffer, flush when a window closes or a retry is due."""
        self._seek_unknown()
        wanted = min(self.options.consume_batch, self.window.room) if self._retry_at is None else 1
        messages = self.kafka.consume(wanted, self._poll_timeout())
        self._buffer(messages)
        if self._retry_at is not None:
            if self.clock() >= self._retry_at:
                self._flush()
            return
        trigger = self.window.ready()
        if trigger is not None:
            self._close_window(trigger)
            self._flush()

    # -- buffering -------------------------------------------------------------------------------

    def _poll_timeout(self) -> float:
        now = self.clock()
        if self._retry_at is not None:
            return max(0.0, min(POLL_INTERVAL_S, self._retry_at - now))
        left = self.window.time_left()
        return POLL_INTERVAL_S if left is None else min(POLL_INTERVAL_S, left)

    def _buffer(self, messages: Iterable[Message]) -> None:
        accepts, add = self.assignment.accepts, self.window.add
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("kafka: %s", error.str())
                continue
            record = to_record(message)
            if accepts(record):
                add(record)

    def _close_window(self, trigger: Trigger) -> None:
        records = self.window.take()
        if self._inflight:
            records = sorted([*self._inflight, *records], key=lambda r: (r.topic, r.partition, r.offset))
        self._inflight = records
        self._trigger = trigger

    # -- flushing --------------------------------------------------------------------------------

    def _flush(self, *, retry: bool = True) -> bool:
        """Write the closed window; True when it is all written. On failure, schedule a retry."""
        records = self._unwritten(self._inflight or [])
        if self._retry_at is not None:
            if not self._refresh_positions(records):
                return False
            records = self._unwritten(records)
        while records:
            started = self.clock()
            batch = Batch(records, self.assignment.expected({r.partition_id for r in records}))
            try:
                result = self.pipeline.write(batch, self.sink, on_commit=self._committed)
            except PositionConflict as conflict:
                self.state.fenced += 1
                log.warning(
                    "fenced: stored position moved for %s; re-reading and seeking",
                    conflict.partitions,
                )
                self._forget_positions(conflict.partitions)
                records = self._unwritten(records)
                continue
            except HaltingReject as halt:
                log.error("%s", halt)
                self._exit = EXIT_HALTED
                self._inflight = records
                return False
            except RejectSinkError as error:
                self._inflight = self._unwritten(records)
                self._schedule_retry(FailureClass.TRANSIENT, f"dead-letter topic unavailable: {error}", retry)
                return False
            except WriteError as error:
                self._inflight = self._unwritten(records)
                reason = f"{error} (SQLSTATE {error.sqlstate})" if error.sqlstate else str(error)
                self._schedule_retry(error.failure, reason, retry)
                return False
            self._flushed(result, len(records), started)
            records = []
        self._inflight = None
        self._recovered()
        return True

    def _unwritten(self, records: Sequence[Record]) -> list[Record]:
        """Records still to write: owned, position known, not behind the stored position."""
        kept = []
        for record in records:
            pid = record.partition_id
            if pid not in self.assignment or pid in self._unknown:
                continue
            stored = self.assignment.stored(pid)
            if stored is None or record.offset >= stored:
                kept.append(record)
        return kept

    @property
    def _unknown(self) -> set[PartitionId]:
        return set(self.assignment.unknown())

    def _committed(self, positions: dict[PartitionId, int]) -> None:
        """After every COMMIT: remember the positions and tell Kafka (advisory, for lag tools)."""
        self.assignment.committed(positions)
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]
        if offsets:
            try:
                self.kafka.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:
                log.debug("advisory kafka commit failed: %s", exc)

    def _flushed(self, result: FlushResult, records: int, started: float) -> None:
        state = self.state
        state.flushes += 1
        state.written += result.inserted
        state.rejected += len(result.rejections)
        state.last_flush_at = self.clock()
        if result.isolated:
            log.info(
                "isolated %d rejected row(s) among %d records with %d statements, %d savepoints, %d transaction(s)",
                len(result.rejections), records, result.statements, result.savepoints, result.transactions,
            )  # fmt: skip
        if self.on_flush is not None:
            self.on_flush(self._trigger, result, records)
        log.debug(
            "flushed %d records (%s): %d new, %d duplicates, %d rejected in %.3f s",
            records, self._trigger.value, result.inserted, result.duplicates, len(result.rejections),
            self.clock() - started,
        )  # fmt: skip

    # -- retries, pause and resume ------------------------------------------------------------------

    def _schedule_retry(self, failure: FailureClass, reason: str, retry: bool) -> None:
        if not retry:
            return
        self._pause_all()
        if failure is FailureClass.TRANSIENT:
            delay = self._backoff.next_delay()
            if self.state.retrying != reason or self._backoff.attempts in (1, 10, 100):
                log.warning(
                    "flush failed (transient): %s; partitions paused, retrying in %.1f s",
                    reason,
                    delay,
                )
            self.state.retrying = reason
        else:
            delay = min(self.options.systemic_retry_max_s, max(self._backoff.next_delay(), 1.0))
            if self.state.halted != reason:
                log.error(
                    "halted: %s; nothing is written until this is fixed (retrying every few seconds)",
                    reason,
                )
            self.state.halted = reason
        self._retry_at = self.clock() + delay

    def _refresh_positions(self, records: Sequence[Record]) -> bool:
        """Before a retry: re-read stored positions (a COMMIT may have landed before the error)."""
        pids = {r.partition_id for r in records}
        try:
            stored = self.pipeline.stored_positions(pids)
        except WriteError as error:
            self._schedule_retry(error.failure, f"{error}", retry=True)
            return False
        self.assignment.committed(stored)
        return True

    def _recovered(self) -> None:
        if self._retry_at is None and not self.state.paused:
            return
        if self.state.halted or self.state.retrying:
            log.info("flush succeeded again; resuming all partitions")
        self._retry_at = None
        self._backoff.reset()
        self.state.halted = self.state.retrying = None
        self._resume_all()

    def _pause_all(self) -> None:
        if not self.state.paused:
            self.state.paused = True
            self._pause(self.assignment.partitions())

    def _resume_all(self) -> None:
        self.state.paused = False
        known = [pid for pid in self.assignment.partitions() if pid not in self._unknown]
        if known:
            try:
                self.kafka.resume([TopicPartition(t, p) for t, p in known])
            except KafkaException as exc:
                log.warning("resume failed: %s", exc)

    def _pause(self, pids: Iterable[PartitionId]) -> None:
        partitions = [TopicPartition(t, p) for t, p in pids]
        if partitions:
            try:
                self.kafka.pause(partitions)
            except KafkaException as exc:
                log.warning("pause failed: %s", exc)

    # -- positions -------------------------------------------------------------------------------

    def _forget_positions(self, pids: Iterable[PartitionId]) -> None:
        """Our copy of these positions is wrong: drop their records, pause, re-read and seek."""
        pids = [pid for pid in pids if pid in self.assignment]
        self.window.drop(pids)
        for pid in pids:
            self.assignment.assign(pid, None, known=False)
        self._pause(pids)
        self._next_seek_at = 0.0
        self._seek_unknown()

    def _seek_unknown(self) -> None:
        """Seek partitions whose stored position was unknown (database down at assignment, fenced)."""
        pids = self.assignment.unknown()
        if not pids or self.clock() < self._next_seek_at:
            return
        self._next_seek_at = self.clock() + SEEK_RETRY_INTERVAL_S
        try:
            stored = self.pipeline.stored_positions(pids)
        except WriteError as error:
            log.warning(
                "cannot read stored positions yet (%s); %d partition(s) stay paused",
                error,
                len(pids),
            )
            return
        for pid in pids:
            position = stored.get(pid)
            target = position if position is not None else self._start_offset(pid)
            try:
                self.kafka.seek(TopicPartition(pid[0], pid[1], target))
            except KafkaException as exc:
                log.debug("seek %s to %s not possible yet: %s", pid, target, exc)
                continue
            self.window.drop([pid])
            self.assignment.sought(pid, position, floor=target if target >= 0 else None)
            if not self.state.paused:
                self.kafka.resume([TopicPartition(pid[0], pid[1])])
            log.info(
                "partition %s[%d] positioned at %s",
                pid[0],
                pid[1],
                target if target >= 0 else "the reset policy",
            )

    def _start_offset(self, pid: PartitionId) -> int:
        """Where a partition without a stored row starts: Kafka's committed offset, else the reset policy."""
        try:
            committed = self.kafka.committed([TopicPartition(pid[0], pid[1])], timeout=10)
            if committed and committed[0].offset >= 0:
                return int(committed[0].offset)
        except KafkaException as exc:
            log.debug("committed offset of %s unavailable: %s", pid, exc)
        return OFFSET_BEGINNING if self.options.auto_offset_reset == "earliest" else OFFSET_END

    # -- rebalance callbacks (run inside consume(); must never raise) -----------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self.state.rebalances["assign"] += 1
            pids = [(tp.topic, tp.partition) for tp in partitions]
            try:
                stored, known = self.pipeline.stored_positions(pids), True
            except WriteError as error:
                log.warning(
                    "assigned %d partition(s) while the database is unreachable (%s): paused",
                    len(pids),
                    error,
                )
                stored, known = {}, False
            assigned = []
            for pid in pids:
                position = stored.get(pid)
                self.assignment.assign(pid, position, known=known)
                offset = position if known and position is not None else OFFSET_STORED
                assigned.append(TopicPartition(pid[0], pid[1], offset))
            consumer.incremental_assign(assigned)
            if self.state.paused or not known:
                consumer.pause(assigned)
            log.info("assigned %s", _describe(pids, stored))
        except Exception:
            log.exception("on_assign failed; partitions will be re-read from PostgreSQL")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self.state.rebalances["revoke"] += 1
            pids = [(tp.topic, tp.partition) for tp in partitions]
            revoked = set(pids)
            if not self._closing and self._retry_at is None and self.window.partitions() & revoked:
                # Flush what we have while we still own it (one attempt, no retry inside a rebalance).
                self._close_window(Trigger.REVOKE)
                self._flush(retry=False)
            self._drop(revoked)
            self.assignment.release(pids)
            log.info("revoked %s", _describe(pids, {}))
        except Exception:
            log.exception("on_revoke failed; the partitions' buffers were dropped")
            self._drop({(tp.topic, tp.partition) for tp in partitions})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self.state.rebalances["lost"] += 1
            pids = {(tp.topic, tp.partition) for tp in partitions}
            self._drop(pids)
            self.assignment.release(pids)
            log.warning(
                "lost %s (session expired): buffers dropped, nothing committed",
                _describe(sorted(pids), {}),
            )
        except Exception:
            log.exception("on_lost failed")

    def _drop(self, pids: set[PartitionId]) -> None:
        self.window.drop(pids)
        if self._inflight:
            self._inflight = [r for r in self._inflight if r.partition_id not in pids] or None
        if not self._inflight and self._retry_at is not None and self.state.halted is None:
            self._retry_at = None  # nothing left to retry: the next flush resumes

    # -- shutdown ----------------------------------------------------------------------------------

    def _shutdown(self) -> int:
        """Flush everything buffered within the deadline; EXIT_OK when it all got written."""
        deadline = self.clock() + self.options.shutdown_timeout_s
        if len(self.window):
            self._close_window(Trigger.SHUTDOWN)
        while self._inflight and self.clock() < deadline and self._exit is None:
            if self._retry_at is not None and self.clock() < self._retry_at:
                # Keep polling (group membership) but buffer nothing new: we are leaving.
                self.kafka.consume(1, min(POLL_INTERVAL_S, max(0.0, self._retry_at - self.clock())))
                continue
            self._flush()
        if self._exit is not None:
            return self._exit
        if self._inflight:
            log.error("shutdown deadline passed with %d records unwritten; they will be re-read on restart",
                      len(self._inflight))  # fmt: skip
            return EXIT_UNCLEAN
        log.info("shut down cleanly: %d flushes, %d rows written", self.state.flushes, self.state.written)
        return EXIT_OK


def _describe(pids: Sequence[PartitionId], stored: dict[PartitionId, int]) -> str:
    parts = [f"{t}[{p}]" + (f"@{stored[(t, p)]}" if (t, p) in stored else "") for t, p in pids]
    return ", ".join(parts) if parts else "nothing"
