"""Where rejected records go: the dead-letter topic, guarded by a circuit breaker.

`DeadLetterProducer` sends each rejected record with its original key, value and headers plus the
`dlq.*` headers (docs/ARCHITECTURE.md, "Dead letters") and returns only when every delivery report came back without
error: the caller commits the position past those records only after that. `HaltOnReject` is used
when the pipeline names no dead-letter topic: a rejected record stops the consumer instead of being
skipped. `GuardedSink` puts the circuit breaker in front of either.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from confluent_kafka import KafkaError, Message, Producer

from consumer.breaker import DeadLetterBreaker
from consumer.outcomes import BreakerOpen, DeadLetterUnavailable, HaltingReject
from pipeline import failpoints
from pipeline.records import Header, Record, Rejection
from pipeline.rejects import RejectSink

log = logging.getLogger("microbatch.deadletter")

DLQ_PREFIX = "dlq."
MAX_ERROR_MESSAGE = 500


def dead_letter_headers(
    rejection: Rejection, group: str, attempts: int, failed_at: datetime
) -> list[tuple[str, str | bytes | None]]:
    """Original headers (minus any `dlq.*` we set) followed by ours, all values UTF-8 text."""
    record = rejection.record
    ours: dict[str, str] = {
        "dlq.original.topic": record.topic,
        "dlq.original.partition": str(record.partition),
        "dlq.original.offset": str(record.offset),
        "dlq.reason": rejection.reason.value,
        "dlq.error.class": rejection.error_class,
        "dlq.error.message": rejection.message[:MAX_ERROR_MESSAGE],
        "dlq.consumer.group": group,
        "dlq.failed_at": failed_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "dlq.attempts": str(attempts),
    }
    if rejection.sqlstate:
        ours["dlq.error.sqlstate"] = rejection.sqlstate
    kept: list[tuple[str, str | bytes | None]] = [(name, value) for name, value in record.headers if name not in ours]
    return kept + [(name, value.encode()) for name, value in ours.items()]


class DeadLetterProducer:
    """An idempotent (acks=all) producer to one dead-letter topic; `deliver` waits for every ack."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        group: str,
        *,
        timeout_s: float = 30.0,
        on_delivered: Callable[[Rejection], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.group = group
        self.timeout_s = timeout_s
        self.on_delivered = on_delivered
        self._clock = clock
        self._attempts: dict[tuple[str, int, int], int] = {}

    def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record] = ()) -> None:
        """Produce every rejection and wait for its delivery report; raise DeadLetterUnavailable otherwise."""
        if not rejections:
            return
        failures: list[str] = []
        acked: list[Rejection] = []
        now = self._clock()
        for rejection in rejections:
            record = rejection.record
            coordinates = (record.topic, record.partition, record.offset)
            attempts = self._attempts.get(coordinates, 0) + 1
            self._attempts[coordinates] = attempts
            headers = dead_letter_headers(rejection, self.group, attempts, now)
            self._produce(record, headers, _report(rejection, acked, failures))
        failpoints.hit("after_dlq_produce")
        deadline = time.monotonic() + self.timeout_s
        while len(acked) + len(failures) < len(rejections) and (left := deadline - time.monotonic()) > 0:
            # flush(), unlike poll(), sends at once instead of lingering (linger.ms) first: the
            # flush's transaction is open meanwhile, and PostgreSQL waits for this.
            self.producer.flush(min(left, 0.5))
        if failures or len(acked) < len(rejections):
            missing = len(rejections) - len(acked)
            reason = failures[0] if failures else f"no delivery report within {self.timeout_s:.0f} s"
            raise DeadLetterUnavailable(
                f"{missing} of {len(rejections)} dead letters not acknowledged by {self.topic}: {reason}"
            )
        for rejection in acked:
            record = rejection.record
            self._attempts.pop((record.topic, record.partition, record.offset), None)
            if self.on_delivered is not None:
                self.on_delivered(rejection)

    def _produce(
        self,
        record: Record,
        headers: list[tuple[str, str | bytes | None]],
        report: Callable[[KafkaError | None, Message], None],
    ) -> None:
        while True:
            try:
                self.producer.produce(
                    self.topic, value=record.value, key=record.key, headers=headers, on_delivery=report
                )
                return
            except BufferError:
                self.producer.poll(0.05)  # local queue full: let deliveries drain first

    def close(self, timeout_s: float = 10.0) -> None:
        self.producer.flush(timeout_s)


def _report(
    rejection: Rejection, acked: list[Rejection], failures: list[str]
) -> Callable[[KafkaError | None, Message], None]:
    def report(err: KafkaError | None, msg: Message) -> None:
        if err is None:
            acked.append(rejection)
        else:
            failures.append(err.str())

    return report


class HaltOnReject:
    """A reject sink that refuses every rejection: the flush rolls back and the consumer stops."""

    def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record] = ()) -> None:
        if not rejections:
            return
        first = rejections[0]
        record = first.record
        raise HaltingReject(
            f"message {record.topic}[{record.partition}]@{record.offset} is invalid ({first.reason.value}: "
            f"{first.message}) and the pipeline has no dead_letter_topic; stopping without writing it "
            f"({len(rejections)} invalid message(s) in this batch). Fix the producer or set dead_letter_topic."
        )


class GuardedSink:
    """A circuit breaker in front of a reject sink: refuses a commit that rejects too much."""

    def __init__(self, inner: RejectSink, breaker: DeadLetterBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
        rejected = {(r.record.topic, r.record.partition, r.record.offset) for r in rejections}
        outcomes = (
            [(r.topic, r.partition, r.offset) in rejected for r in resolved] if rejected else [False] * len(resolved)
        )
        reason = self.breaker.check(outcomes)
        if reason is not None:
            raise BreakerOpen(reason)
        self.inner.deliver(rejections, resolved)
        # Recorded before the COMMIT: if that COMMIT then fails, the retry counts these records
        # again, which can only make the breaker stricter, never let more through.
        self.breaker.record(outcomes)


def header_dict(headers: Sequence[Header] | None) -> dict[str, str]:
    """Headers as text, last value wins (for reading dead letters back)."""
    return {name: (value or b"").decode("utf-8", "replace") for name, value in headers or ()}
