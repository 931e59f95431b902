"""Letters that each fit the dead-letter topic but were refused together: a topic's max.message.bytes
limits whole record batches, so a batch of letters can be refused as too large while every letter in it
fits (the topic's limit was lowered after the producer was made, or could not be read). Such a letter
is sent again as it was, not without its value: together with the others once a producer whose
batches fit the limit is there, else by itself; only a copy refused by itself is made smaller (pure
logic, with a fake producer; the real broker is in tests/integration/test_dead_letter_batches.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
from confluent_kafka import KafkaError, KafkaException

from consumer.dlq_book import Book, Copy
from consumer.dlq_limits import SizeLimit
from consumer.outcomes import DeadLetterRefused, DeadLetterUnavailable
from tests.unit.test_dead_letter_producer import HOLD, Decision, FakeProducer, Produced, rejection, sink

TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
UNKNOWN = SizeLimit(1_000_000, lambda timeout: None, topic_bytes=None)  # the topic's limit cannot be read


@dataclass
class BatchingProducer(FakeProducer):
    """Refuses as too large every copy polled together with another one (a batch over the topic's
    limit), and records how many copies each poll found queued."""

    batches: list[int] = field(default_factory=list)

    def poll(self, timeout: float = 0) -> int:
        if self.queued:
            self.batches.append(len(self.queued))
            verdict = TOO_LARGE if len(self.queued) > 1 else None
            self.decide = lambda letter: verdict
        return super().poll(timeout)


def over(limit: int) -> FakeProducer:
    """A topic that refuses any copy over `limit` bytes of key, value and headers, even by itself."""

    def decide(letter: Produced) -> Decision:
        headers = sum(len(name) + len(value or b"") for name, value in letter.headers.items())
        return TOO_LARGE if len(letter.value or b"") + len(letter.key or b"") + headers > limit else None

    return FakeProducer(decide=decide)


def test_letters_refused_in_a_batch_under_an_unknown_limit_are_sent_again_whole_one_at_a_time() -> None:
    fake = BatchingProducer()
    producer = sink(fake, timeout_s=5.0, limit=UNKNOWN)
    letters = [rejection(offset, b"v" * 3000) for offset in range(4)]
    producer.send_ahead(letters)  # the four go out as one batch: refused
    producer.deliver(letters)
    assert fake.batches == [4, 1, 1, 1, 1], "the copies sent again were not sent one by one"
    again = fake.produced[4:]
    assert [p.value for p in again] == [b"v" * 3000] * 4, "a letter that fits lost its value"
    assert all("dlq.value.omitted" not in p.headers for p in again)
    assert len(producer.delivered) == 4  # type: ignore[attr-defined]


def test_a_letter_refused_by_itself_is_made_smaller_part_by_part() -> None:
    fake = over(2000)  # the topic's real limit, which cannot be read
    producer = sink(fake, timeout_s=5.0, limit=UNKNOWN)
    producer.deliver([rejection(1, b"w" * 5000, key=b"k" * 3000)])
    whole, no_value, neither = fake.produced  # never the whole letter again once it was refused by itself
    assert whole.value == b"w" * 5000 and no_value.value is None and no_value.key == b"k" * 3000
    assert neither.value is None and neither.key is None and neither.headers["dlq.key.bytes"] == b"3000"


def test_a_limit_below_the_dlq_headers_halts_instead_of_retrying_for_ever() -> None:
    fake = over(100)
    producer = sink(fake, timeout_s=5.0, limit=SizeLimit(1_000_000, lambda timeout: None, topic_bytes=None))
    with pytest.raises(DeadLetterRefused, match="cannot hold even the dlq"):
        producer.deliver([rejection(1, b"w" * 5000, key=b"k" * 3000)])


ONE, TWO = ("t", 0, 1, None, 0), ("t", 0, 2, None, 0)


def test_a_copy_is_alone_only_while_no_other_copy_is_in_flight() -> None:
    book, first, second, third = Book(), Copy(10), Copy(10), Copy(10)
    book.sent(ONE, first)
    assert (first.alone, book.lone()) == (True, ONE)
    book.sent(TWO, second)  # a later attempt's copy joins it in flight
    assert (first.alone, second.alone, book.lone()) == (False, False, None)
    book.reported(ONE, first, TOO_LARGE)
    book.reported(TWO, second, None)
    book.sent(ONE, third)
    assert (third.alone, first.alone) == (True, False), "a refused copy's flight changed after its report"
    book.abandon()  # the producer was replaced: nothing is in flight any more
    assert book.lone() is None
    book.sent(TWO, Copy(10))
    assert third.alone, "an abandoned copy's flight changed"


def test_a_lower_limit_read_makes_a_producer_sized_for_it_and_the_letters_go_again_together() -> None:
    first = BatchingProducer()
    made: list[int | None] = []
    renewed = FakeProducer()

    def renew(topic_bytes: int | None) -> FakeProducer:
        made.append(topic_bytes)
        return renewed

    producer = sink(first, timeout_s=5.0, renew=renew,
                    limit=SizeLimit(1_000_000, lambda timeout: 20_000, topic_bytes=1_000_000))  # fmt: skip
    letters = [rejection(offset, b"x" * 3000) for offset in range(3)]
    producer.send_ahead(letters)
    producer.deliver(letters)  # refused as a batch: the limit is read again, and found lower
    assert made == [20_000] and producer.limit.bytes == 20_000
    assert first.batches == [3], "the old producer got the letters again"
    assert [p.value for p in renewed.produced] == [b"x" * 3000] * 3
    producer.send_ahead([rejection(9)])
    assert made == [20_000], "a producer was made again for the same limit"


def test_no_new_producer_while_a_copy_is_in_flight() -> None:
    fake = FakeProducer(decide=lambda letter: HOLD)
    made: list[int | None] = []

    def renew(topic_bytes: int | None) -> FakeProducer:
        made.append(topic_bytes)
        return FakeProducer()

    producer = sink(fake, renew=renew, limit=SizeLimit(1_000_000, lambda timeout: 20_000, topic_bytes=1_000_000))
    producer.send_ahead([rejection(1)])
    producer.limit.refresh(1.0)
    producer.send_ahead([rejection(2)])
    assert made == [], "the producer was replaced with a copy in flight (its report would never come)"
    fake.decide = lambda letter: None
    fake.poll()
    producer.send_ahead([rejection(3)])
    assert made == [20_000]


def test_a_resend_together_refused_again_falls_back_to_one_at_a_time() -> None:
    fake = BatchingProducer()  # as a producer whose batch.size is not what it was made for would
    producer = sink(fake, timeout_s=5.0, limit=SizeLimit(1_000_000, lambda timeout: None, topic_bytes=20_000))
    letters = [rejection(offset, b"v" * 3000) for offset in range(4)]
    producer.send_ahead(letters)
    producer.deliver(letters)
    assert fake.batches == [4, 4, 1, 1, 1, 1]
    assert all(p.value == b"v" * 3000 for p in fake.produced), "a letter that fits lost its value"


def test_a_new_producer_that_cannot_be_made_is_tried_once_and_the_letters_still_go_one_by_one() -> None:
    fake = BatchingProducer()
    tried: list[int | None] = []

    def renew(topic_bytes: int | None) -> FakeProducer:
        tried.append(topic_bytes)
        raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "no"))

    producer = sink(fake, timeout_s=5.0, renew=renew,
                    limit=SizeLimit(1_000_000, lambda timeout: 20_000, topic_bytes=1_000_000))  # fmt: skip
    for window in range(2):
        letters = [rejection(10 * window + offset, b"v" * 3000) for offset in range(3)]
        producer.send_ahead(letters)
        producer.deliver(letters)
    assert tried == [20_000], "the producer that could not be made was asked for again"
    assert fake.batches == [3, 1, 1, 1, 3, 1, 1, 1], "letters refused together were sent together again"


def test_a_copy_flying_alone_for_another_window_does_not_hold_this_one() -> None:
    fake = FakeProducer(decide=lambda letter: HOLD if letter.headers["dlq.original.offset"] == b"1" else None)
    producer = sink(fake, timeout_s=3.0)
    producer.deliver([rejection(2)])
    producer.send_ahead([rejection(1)])  # another window's letter, in flight by itself
    started = time.monotonic()
    producer.deliver([rejection(2)])  # a retry of the first: acknowledged already
    assert time.monotonic() - started < 1.0, "deliver waited for a letter it does not need"


def test_a_producer_that_cannot_be_renewed_after_a_fatal_error_is_a_retry_and_tried_again() -> None:
    broken = FakeProducer(decide=lambda letter: KafkaError(KafkaError._FATAL, "fenced", fatal=True))
    fresh = FakeProducer()
    asked: list[int | None] = []

    def renew(topic_bytes: int | None) -> FakeProducer:
        asked.append(topic_bytes)
        if len(asked) == 1:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "no broker"))
        return fresh

    producer = sink(broken, renew=renew, limit=SizeLimit(1_000_000, lambda timeout: None, topic_bytes=300_000))
    with pytest.raises(DeadLetterRefused, match="fatal error"):
        producer.deliver([rejection(1)])
    with pytest.raises(DeadLetterUnavailable, match="could not make a new dead-letter producer"):
        producer.deliver([rejection(1)])
    producer.limit.topic_bytes = 200_000  # read again meanwhile
    producer.deliver([rejection(1)])
    assert asked == [300_000, 200_000], "the topic's limit as known now sizes the new producer's batches"
    assert broken.purged and len(broken.produced) == 1 and len(fresh.produced) == 1
