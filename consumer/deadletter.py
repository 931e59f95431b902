"""Where rejected records go: the dead-letter topic, guarded by a circuit breaker.

`DeadLetterProducer` sends each rejected record with its original key, value and headers plus the
`dlq.*` headers (docs/ARCHITECTURE.md, "Dead letters") and returns only when every one of them was
acknowledged by the topic: the caller commits the position past those records only after that.
Whatever the message and whatever the broker says, it returns or raises one of two errors, never
anything else:

* a letter too large for the topic is sent without its value (then key, then original headers),
  described by size and sha256 (consumer/dlq_letter.py). A copy that fits the limit but was refused
  while it shared its flight (the topic's max.message.bytes limits whole batches, and that limit
  may have been lowered since the producer was made, or be unreadable) is sent again as it was;
  only a copy refused by itself is made smaller;
* `DeadLetterRefused` (the flush halts) when the topic refuses for good: deleted, not authorized,
  misconfigured, a fatal producer error, too small for any letter (consumer/dlq_refusals.py);
* `DeadLetterUnavailable` (the flush is retried) otherwise: no acknowledgement within
  `timeout_s`, a full local queue for that long, a broker down.

A retried flush does not send again what the topic acknowledged (the last 100,000 messages are
remembered) nor what is still queued in the producer: it waits for that copy (consumer/dlq_book.py).

What decides whether rejections may go there at all (the circuit breaker; halting when the pipeline
has no dead-letter topic) is consumer/reject_sinks.py.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.dlq_book import REMEMBER, Book, Copy, Key, State, key_of
from consumer.dlq_letter import DLQ_PREFIX, MAX_ERROR_MESSAGE, Letter, dead_letter_headers, fit
from consumer.dlq_limits import PRODUCER_DEFAULT_MAX_BYTES, SizeLimit, batch_bytes
from consumer.dlq_refusals import MISSING, refusal, too_large, topic_problem
from consumer.outcomes import DeadLetterRefused, DeadLetterUnavailable
from pipeline import failpoints
from pipeline.records import Header, Record, Rejection

__all__ = ["DLQ_PREFIX", "MAX_ERROR_MESSAGE", "DeadLetterProducer", "dead_letter_headers", "header_dict"]

log = logging.getLogger("microbatch.deadletter")
# What making a producer from settings librdkafka accepted before can still raise (consumer.kafka_clients).
RENEWAL_ERRORS = (KafkaException, TypeError, ValueError, RuntimeError)


class DeadLetterProducer:
    """An idempotent (acks=all) producer to one dead-letter topic; `deliver` waits for every ack.

    `limit` sizes the letters (the producer's and the topic's limits); `renew(topic_bytes)` makes a new
    producer with batches that fit a topic limit of `topic_bytes` (None: unknown): after a fatal error
    (without it, a fatal error halts for good) and once the topic's limit is read lower.
    """

    def __init__(
        self,
        producer: Producer,
        topic: str,
        group: str,
        *,
        timeout_s: float = 30.0,
        limit: SizeLimit | None = None,
        renew: Callable[[int | None], Producer] | None = None,
        on_delivered: Callable[[Rejection], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        remember: int = REMEMBER,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.group = group
        self.timeout_s = timeout_s
        self.limit = limit or SizeLimit(PRODUCER_DEFAULT_MAX_BYTES)
        self.on_delivered = on_delivered
        self._renew = renew
        self._clock = clock
        self.book = Book(remember)
        self._refused: str | None = None  # why the last attempt was refused: checked before the next
        self._broken = False  # a fatal error: the producer must be replaced
        self._refreshed = False  # the topic's limit was read again during this attempt
        self._stored: set[Key] = set()  # messages acknowledged during this attempt, or before it
        self._sized_for = batch_bytes(self.limit.topic_bytes)  # the producer's batch.size, as made
        self._tried_for = self._sized_for  # the lowest batch.size a new producer was asked for
        self._rebatched = False  # copies refused as too large were sent again together in this attempt

    # A share of the timeout is kept for the metadata request that tells a refusal from an outage.
    @property
    def _reserve_s(self) -> float:
        return min(1.0, self.timeout_s / 5)

    def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record] = ()) -> None:
        """Store every rejection in the topic; raise DeadLetterRefused or DeadLetterUnavailable otherwise."""
        if not rejections:
            return
        deadline = time.monotonic() + self.timeout_s
        self._refreshed = self._rebatched = False
        self._recover(deadline)
        self.producer.poll(0)  # reports of copies queued by an earlier attempt
        now = self._clock()
        wanted: dict[Key, Rejection] = {}
        self._stored = set()  # acknowledged during this attempt (the memory may forget them meanwhile)
        for rejection in rejections:
            key = key_of(rejection.record)
            if key not in wanted:
                wanted[key] = rejection
                state = self.book.state(key)
                if state is State.ACKNOWLEDGED:
                    self._stored.add(key)
                elif state is not State.SENDING and not self._refused_as_too_large(key):
                    self._send(key, rejection, now, deadline)
        failpoints.hit("after_dlq_produce")
        self._await(wanted, now, deadline)
        missing = [key for key in wanted if key not in self._stored]
        if missing:
            self._fail(missing, len(wanted), deadline)
        self._refused = None

    def send_ahead(self, rejections: Sequence[Rejection], resolved: Sequence[Record] = ()) -> None:
        """Hand the rejections never sent yet to the producer, whole, without waiting for anything:
        the `deliver` before the COMMIT then mostly finds them acknowledged (pipeline.rejects).
        Never raises and changes nothing but the book (and the producer, for one whose batches fit
        a lower limit read since): a letter that does not fit whole under the
        limit as known is left to `deliver`, which may read the topic's limit again first, and at
        the first letter the producer does not take at once (a full queue, a refusal) the rest is
        left to `deliver` too, which meets the same and decides."""
        if not rejections or self._broken or self._refused is not None:
            return  # `deliver` recovers first
        self._resize()
        now = self._clock()
        for rejection in rejections:
            key = key_of(rejection.record)
            if self.book.state(key) is not State.NEW:
                continue
            letter = fit(rejection, self.group, self.book.attempts(key) + 1, now, self.limit.bytes)
            if letter is None or letter.omitted:
                continue
            copy = Copy(letter.size)
            try:
                self.producer.produce(self.topic, value=letter.value, key=letter.key, headers=letter.headers,
                                      on_delivery=self._report(key, rejection, copy))  # fmt: skip
            except (BufferError, KafkaException) as exc:
                log.debug("dead letters not sent ahead (the delivery before the commit sends them): %s", exc)
                return
            self.book.sent(key, copy)

    def _await(self, wanted: dict[Key, Rejection], now: datetime, deadline: float) -> None:
        """Until every wanted message is acknowledged or failed, or the deadline (less the reserve) passed.
        A copy the topic refused as too large is made smaller when it was refused by itself or is over
        the limit as now known. Otherwise the batch it was in may be what was too large: it is sent
        again as it was, with nothing else in flight: all such copies together once the producer's
        batches fit the limit as known (once per attempt), else one at a time."""
        again: deque[Key] = deque()  # refused, perhaps for their batch: to be sent again as they were
        while True:
            lone = self.book.lone()
            if not again and (lone is None or lone not in wanted):  # (a wanted copy flying alone: wait)
                again.extend(self._resend_too_large(wanted, now, deadline))
            if again and not self.book.sending():
                self._resize()
                together = not self._rebatched and self._batches_fit()
                self._rebatched = self._rebatched or together
                for _ in range(len(again) if together else 1):
                    key = again.popleft()
                    failed = self.book.failure(key) if self.book.state(key) is State.FAILED else None
                    if failed is not None:
                        self._send(key, wanted[key], now, deadline, below=failed[1].below)
            if not again and not any(self.book.state(k) is State.SENDING for k in wanted if k not in self._stored):
                return
            left = deadline - self._reserve_s - time.monotonic()
            if left <= 0:
                return
            # flush(), unlike poll(), sends at once instead of lingering (linger.ms) first: the
            # flush's transaction is open meanwhile, and PostgreSQL waits for this.
            self.producer.flush(min(left, 0.5))

    def _resend_too_large(self, wanted: dict[Key, Rejection], now: datetime, deadline: float) -> list[Key]:
        """Send again smaller each wanted copy refused as too large by itself, or over the limit as now
        known; return the others (they fit it: the batch they were in may have been refused)."""
        again = []
        for key, rejection in wanted.items():
            failed = self.book.failure(key) if self.book.state(key) is State.FAILED else None
            if failed is None or not too_large(failed[0]):
                continue
            self._refresh(deadline)  # the limit may have changed since it was read
            if not failed[1].alone and failed[1].size <= self.limit.bytes:
                again.append(key)
            else:
                self._send(key, rejection, now, deadline, below=failed[1].size)
        return again

    def _batches_fit(self) -> bool:
        """The topic's limit is known and the producer was made with batches that fit it."""
        return self.limit.topic_bytes is not None and self._sized_for <= batch_bytes(self.limit.topic_bytes)

    def _refused_as_too_large(self, key: Key) -> bool:
        """The last copy of `key` was refused as too large: `_await` sends it again, whole or smaller."""
        failed = self.book.failure(key)
        return failed is not None and too_large(failed[0])

    def _fail(self, missing: list[Key], wanted: int, deadline: float) -> None:
        errors = [failed[0] for key in missing if (failed := self.book.failure(key)) is not None]
        self._broken = self._broken or any(error.fatal() or error.code() == KafkaError._FATAL for error in errors)
        why = next((found for error in errors if (found := refusal(error)) is not None), None)
        if why is None:
            why = topic_problem(self.producer, self.topic, deadline - time.monotonic())
        if why is not None:
            self._refused = why
            raise DeadLetterRefused(f"dead letters not acknowledged by {self.topic}: {why}")
        reason = errors[0].str() if errors else f"no delivery report within {self.timeout_s:g} s"
        sending = sum(1 for key in missing if self.book.state(key) is State.SENDING)
        queued = f" ({sending} still queued: not sent again until they report)" if sending else ""
        raise DeadLetterUnavailable(
            f"{len(missing)} of {wanted} dead letters not acknowledged by {self.topic}: {reason}{queued}"
        )

    def _recover(self, deadline: float) -> None:
        """Before an attempt: a new producer after a fatal error; after a refusal, whether the topic is
        back (refused again at once, without producing, while it is not)."""
        if self._broken and self._renew is not None:
            try:
                producer = self._renew(self.limit.topic_bytes)
            except RENEWAL_ERRORS as exc:
                raise DeadLetterUnavailable(f"could not make a new dead-letter producer: {exc}") from None
            old, self.producer, self._sized_for = self.producer, producer, batch_bytes(self.limit.topic_bytes)
            self.book.abandon()
            self._broken = False
            _discard(old, purge=True)
            log.info("replaced the dead-letter producer after a fatal error")
        self._resize()
        if self._refused is not None:
            problem = topic_problem(self.producer, self.topic, min(5.0, deadline - time.monotonic()))
            if problem is not None:
                raise DeadLetterRefused(f"dead letters not acknowledged by {self.topic}: {problem}")

    def _resize(self) -> None:
        """A new producer when the topic's limit is lower than the one its batches were sized for (its
        batch.size is fixed when it is made), once none of its copies is in flight: letters that each
        fit would otherwise keep being batched over the limit, refused, and sent again one by one."""
        sized_for = batch_bytes(self.limit.topic_bytes)
        if self._renew is None or self.book.sending() or sized_for >= min(self._sized_for, self._tried_for):
            return
        self._tried_for = sized_for  # once per limit: if it cannot be made, copies refused together go one by one
        try:
            producer = self._renew(self.limit.topic_bytes)
        except RENEWAL_ERRORS as exc:
            log.warning("could not make a dead-letter producer for %s's lower limit: %s", self.topic, exc)
            return
        old, self.producer, self._sized_for = self.producer, producer, sized_for
        _discard(old, purge=False)
        log.info("made a new dead-letter producer whose batches fit %s's max.message.bytes of %d bytes",
                 self.topic, sized_for)  # fmt: skip

    def _letter(self, rejection: Rejection, attempts: int, now: datetime, deadline: float, below: int | None) -> Letter:
        """The letter to send, within the limit (and below `below` bytes after a too-large report)."""
        if below is not None:
            self._refresh(deadline)
        while True:
            limit = self.limit.bytes if below is None else min(self.limit.bytes, below - 1)
            letter = fit(rejection, self.group, attempts, now, limit)
            # Not fitting whole may be a stale limit: read the topic's again (once per attempt).
            if (letter is None or letter.omitted) and self._refresh(deadline):
                continue
            if letter is None:
                record = rejection.record
                raise DeadLetterRefused(
                    f"dead letters not acknowledged by {self.topic}: its limit of {limit} bytes per message "
                    f"cannot hold even the dlq.* headers of {record.topic}[{record.partition}]@{record.offset}; "
                    "raise the topic's max.message.bytes"
                )
            if letter.omitted:
                record = rejection.record
                log.warning(
                    "dead letter of %s[%d]@%d is over the limit of %d bytes: sent without its %s",
                    record.topic, record.partition, record.offset, limit, ", ".join(letter.omitted),
                )  # fmt: skip
            return letter

    def _refresh(self, deadline: float) -> bool:
        """Read the topic's limit again, once per attempt; True when it changed."""
        if self._refreshed:
            return False
        self._refreshed = True
        return self.limit.refresh(max(0.1, min(2.0, deadline - time.monotonic())))

    def _send(self, key: Key, rejection: Rejection, now: datetime, deadline: float, below: int | None = None) -> None:
        """Hand one copy to the producer; a full local queue is waited for until the deadline."""
        while True:
            letter = self._letter(rejection, self.book.attempts(key) + 1, now, deadline, below)
            copy = Copy(letter.size, below)
            try:
                self.producer.produce(self.topic, value=letter.value, key=letter.key, headers=letter.headers,
                                      on_delivery=self._report(key, rejection, copy))  # fmt: skip
            except BufferError:
                if time.monotonic() >= deadline:
                    raise DeadLetterUnavailable(
                        f"the dead-letter producer's local queue for {self.topic} stayed full for "
                        f"{self.timeout_s:g} s ({self.book.sending()} letters awaiting acknowledgement)"
                    ) from None
                self.producer.poll(0.05)  # let deliveries drain first
                continue
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if too_large(error):
                    below = letter.size
                    continue
                self._broken = self._broken or error.fatal() or error.code() == KafkaError._FATAL
                why = refusal(error)
                if why is None and error.code() in MISSING:
                    why = topic_problem(self.producer, self.topic, deadline - time.monotonic())
                if why is not None:
                    self._refused = why
                    raise DeadLetterRefused(f"dead letters not acknowledged by {self.topic}: {why}") from None
                raise DeadLetterUnavailable(f"dead letter not accepted by the producer for {self.topic}: "
                                            f"{error.str()}") from None  # fmt: skip
            self.book.sent(key, copy)
            return

    def _report(self, key: Key, rejection: Rejection, copy: Copy) -> Callable[[KafkaError | None, Message], None]:
        def report(err: KafkaError | None, msg: Message) -> None:
            self.book.reported(key, copy, err)
            if err is None:
                self._stored.add(key)
                if self.on_delivered is not None:
                    self.on_delivered(rejection)

        return report

    def close(self, timeout_s: float = 10.0) -> None:
        self.producer.flush(timeout_s)


def _discard(producer: Producer, *, purge: bool) -> None:
    """Let go of a replaced producer (`purge`: drop what it still queues; its copies were abandoned)."""
    try:
        if purge:
            producer.purge()
        producer.flush(0)
    except (KafkaException, RuntimeError) as exc:
        log.debug("discarding the replaced dead-letter producer: %s", exc)


def header_dict(headers: Sequence[Header] | None) -> dict[str, str]:
    """Headers as text, last value wins (for reading dead letters back)."""
    return {name: (value or b"").decode("utf-8", "replace") for name, value in headers or ()}
