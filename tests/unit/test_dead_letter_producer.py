"""The dead-letter producer's bookkeeping and its answers to every refusal, with a fake producer (pure logic).

What the real broker does is covered by tests/integration/test_dead_letter_path.py; here each rule
is pinned down on its own: a retry waits for a queued copy instead of queueing another, an
acknowledged message is not sent again (within a bounded memory), a full local queue has a
deadline, a letter that does not fit loses its largest parts, and each kind of refusal is a halt
or a retry.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

from consumer.deadletter import DeadLetterProducer
from consumer.dlq_letter import fit, wire_size
from consumer.dlq_limits import SizeLimit
from consumer.failures import Action, classify_failure
from consumer.kafka_config import dead_letter_producer_config
from consumer.outcomes import DeadLetterRefused, DeadLetterUnavailable
from consumer.settings import load_settings
from pipeline.records import Record, Rejection, RejectReason

HOLD = object()  # a decision: the copy stays queued, no report
Decision = KafkaError | None | object


@dataclass
class Produced:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes | None]
    report: Callable[[KafkaError | None, object], None]


@dataclass
class FakeProducer:
    """Queues what is produced; `decide` says what each copy's report will be when polled."""

    decide: Callable[[Produced], Decision] = lambda letter: None
    full_for: int = 0  # produce() raises BufferError this many times first
    raises: KafkaError | None = None  # produce() raises KafkaException with this error
    topic_error: KafkaError | None = None  # list_topics() reports the topic with this error
    max_value: int | None = None  # produce() raises MSG_SIZE_TOO_LARGE for a longer value
    produced: list[Produced] = field(default_factory=list)
    queued: list[Produced] = field(default_factory=list)
    purged: bool = False

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                headers: list[tuple[str, bytes | None]] | None = None,
                on_delivery: Callable[[KafkaError | None, object], None] | None = None) -> None:  # fmt: skip
        if self.full_for > 0:
            self.full_for -= 1
            raise BufferError("Local: Queue full")
        if self.raises is not None:
            raise KafkaException(self.raises)
        if self.max_value is not None and len(value or b"") > self.max_value:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        assert on_delivery is not None
        letter = Produced(key, value, dict(headers or []), on_delivery)
        self.produced.append(letter)
        self.queued.append(letter)

    def poll(self, timeout: float = 0) -> int:
        held, served = [], 0
        for letter in self.queued:
            decision = self.decide(letter)
            if decision is HOLD:
                held.append(letter)
            else:
                served += 1
                letter.report(decision if isinstance(decision, KafkaError) else None, SimpleNamespace())
        self.queued = held
        if not served and timeout > 0:
            time.sleep(min(timeout, 0.01))  # a real producer would wait for reports this long
        return served

    def flush(self, timeout: float = 0) -> int:
        self.poll(timeout)
        return len(self.queued)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> SimpleNamespace:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=self.topic_error)})

    def purge(self) -> None:
        self.purged = True


def rejection(offset: int, value: bytes | None = b"{bad", *, key: bytes | None = b"k",
              headers: tuple[tuple[str, bytes | None], ...] = ()) -> Rejection:  # fmt: skip
    record = Record("orders", 0, offset, key, value, headers, 1_700_000_000_000)
    return Rejection(record, RejectReason.INVALID_JSON, "not JSON", "JSONDecodeError")


def sink(fake: FakeProducer, **options: object) -> DeadLetterProducer:
    delivered: list[Rejection] = []
    options.setdefault("timeout_s", 0.3)
    producer = DeadLetterProducer(fake, "orders.dlq", "g", on_delivered=delivered.append, **options)  # type: ignore[arg-type]
    producer.delivered = delivered  # type: ignore[attr-defined]
    return producer


def test_a_retry_waits_for_the_queued_copy_instead_of_queueing_another() -> None:
    holding = True
    fake = FakeProducer(decide=lambda letter: HOLD if holding else None)
    producer = sink(fake)
    bad = [rejection(n) for n in range(3)]
    with pytest.raises(DeadLetterUnavailable, match=r"3 of 3 dead letters not acknowledged .*3 still queued"):
        producer.deliver(bad)
    with pytest.raises(DeadLetterUnavailable):
        producer.deliver(bad)  # the retry of the same flush
    assert len(fake.produced) == 3, "a retry queued the same dead letters again"
    holding = False
    producer.deliver(bad)
    assert len(fake.produced) == 3
    assert [r.record.offset for r in producer.delivered] == [0, 1, 2]  # type: ignore[attr-defined]


def test_letters_sent_ahead_are_delivered_without_a_second_copy() -> None:
    fake = FakeProducer()
    producer = sink(fake)
    bad = [rejection(n) for n in range(3)]
    producer.send_ahead(bad)
    assert len(fake.produced) == 3 and len(fake.queued) == 3, "handed to the producer, no report awaited"
    assert producer.delivered == []  # type: ignore[attr-defined]
    producer.send_ahead(bad)  # sending: not sent again
    producer.deliver([*bad, rejection(3)])  # the one decoding did not know of (a database rejection)
    assert [int(p.headers["dlq.original.offset"] or b"") for p in fake.produced] == [0, 1, 2, 3]
    assert sorted(r.record.offset for r in producer.delivered) == [0, 1, 2, 3]  # type: ignore[attr-defined]
    assert all(p.headers["dlq.attempts"] == b"1" for p in fake.produced)


def test_sending_ahead_never_waits_nor_raises_and_leaves_the_verdict_to_deliver() -> None:
    full = FakeProducer(full_for=1_000)
    producer = sink(full, timeout_s=5.0)
    started = time.monotonic()
    producer.send_ahead([rejection(n) for n in range(3)])
    assert time.monotonic() - started < 1.0, "it waited for room in the local queue"
    assert full.produced == []
    full.full_for = 0
    producer.deliver([rejection(n) for n in range(3)])
    assert len(full.produced) == 3
    refusing = FakeProducer(raises=KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    producer = sink(refusing)
    producer.send_ahead([rejection(0)])  # refused: said by deliver, not here
    with pytest.raises(DeadLetterRefused, match="not authorized"):
        producer.deliver([rejection(0)])


def test_a_letter_that_does_not_fit_whole_is_left_to_deliver_which_sizes_it() -> None:
    fake = FakeProducer()
    producer = sink(fake, limit=SizeLimit(4000))
    big, small = rejection(0, b"x" * 5000), rejection(1, b"small")
    producer.send_ahead([big, small])
    assert [p.value for p in fake.produced] == [b"small"], "only the letter that fits whole went ahead"
    producer.deliver([big, small])
    assert len(fake.produced) == 2 and fake.produced[1].headers["dlq.value.omitted"] == b"true"


def test_an_acknowledged_message_is_not_sent_again_within_the_memory() -> None:
    fake = FakeProducer()
    producer = sink(fake, remember=3)
    producer.deliver([rejection(n) for n in range(3)])
    producer.deliver([rejection(n) for n in range(4)])  # the same flush retried, with one more
    assert [int(p.headers["dlq.original.offset"] or b"") for p in fake.produced] == [0, 1, 2, 3]
    producer.deliver([rejection(0)])  # forgotten: the memory holds the last 3 (1, 2, 3)
    assert len(fake.produced) == 5
    assert fake.produced[-1].headers["dlq.attempts"] == b"1"


def test_a_copy_that_failed_is_sent_again_on_the_retry_with_its_attempt_count() -> None:
    failing = True
    fake = FakeProducer(decide=lambda letter: KafkaError(KafkaError._MSG_TIMED_OUT) if failing else None)
    producer = sink(fake)
    with pytest.raises(DeadLetterUnavailable, match="Message timed out"):
        producer.deliver([rejection(7)])
    failing = False
    producer.deliver([rejection(7)])
    assert [p.headers["dlq.attempts"] for p in fake.produced] == [b"1", b"2"]


def test_a_full_local_queue_raises_unavailable_at_the_deadline_instead_of_looping_forever() -> None:
    fake = FakeProducer(full_for=10**9)
    producer = sink(fake, timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(DeadLetterUnavailable, match=r"local queue for orders\.dlq stayed full"):
        producer.deliver([rejection(1)])
    assert time.monotonic() - started < 2
    fake.full_for = 3  # a queue that drains: the letter goes once there is room
    producer.deliver([rejection(1)])
    assert len(fake.produced) == 1


def test_a_letter_over_the_limit_is_sent_without_its_value_described_by_size_and_hash() -> None:
    fake = FakeProducer()
    producer = sink(fake, limit=SizeLimit(4000))
    value = b"x" * 10_000
    producer.deliver([rejection(1, value), rejection(2, b"small")])
    big, small = fake.produced
    assert big.value is None and big.key == b"k"
    assert big.headers["dlq.value.omitted"] == b"true"
    assert big.headers["dlq.value.bytes"] == b"10000"
    assert big.headers["dlq.value.sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert (small.value, "dlq.value.omitted" in small.headers) == (b"small", False)


def test_the_largest_part_goes_first_key_and_headers_too() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    big_key = rejection(1, b"v", key=b"k" * 5000)
    letter = fit(big_key, "g", 1, now, 4000)
    assert letter is not None and letter.omitted == ("key",) and letter.value == b"v" and letter.key is None
    assert dict(letter.headers)["dlq.key.sha256"] == hashlib.sha256(b"k" * 5000).hexdigest().encode()
    spoofed = rejection(4, b"v", headers=(("dlq.value.omitted", b"true"), ("dlq.key.bytes", b"1")))
    letter = fit(spoofed, "g", 1, now, 4000)
    assert letter is not None and letter.value == b"v" and "dlq.value.omitted" not in dict(letter.headers)
    assert "dlq.key.bytes" not in dict(letter.headers), "an incoming omission header is never kept"
    big_headers = rejection(2, b"v", headers=(("trace", b"t" * 5000), ("dlq.reason", b"spoofed")))
    letter = fit(big_headers, "g", 1, now, 4000)
    assert letter is not None and letter.omitted == ("headers",) and letter.key == b"k"
    names = [name for name, _ in letter.headers]
    assert "trace" not in names and dict(letter.headers)["dlq.headers.omitted"] == b"true"
    assert names.count("dlq.reason") == 1
    everything = rejection(3, b"v" * 3000, key=b"k" * 3000, headers=(("trace", b"t" * 3000),))
    letter = fit(everything, "g", 1, now, 2000)
    assert letter is not None and set(letter.omitted) == {"value", "key", "headers"}
    assert letter.size <= 2000 and letter.size == wire_size(letter.key, letter.value, letter.headers)
    assert fit(everything, "g", 1, now, 300) is None  # not even our own headers fit


def test_the_topic_refusing_a_copy_as_too_large_gets_a_smaller_copy_and_a_fresh_limit() -> None:
    described: list[float] = []

    def describe(timeout: float) -> int | None:
        described.append(timeout)
        return 3000  # the topic's limit was lowered since start-up

    fake = FakeProducer(
        decide=lambda p: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if len(p.value or b"") > 2000 else None
    )
    producer = sink(fake, limit=SizeLimit(1_000_000, describe, topic_bytes=1_000_000))
    producer.deliver([rejection(5, b"y" * 2500)])
    first, second = fake.produced
    assert first.value == b"y" * 2500 and second.value is None
    assert second.headers["dlq.value.bytes"] == b"2500"
    assert len(described) == 1 and producer.limit.bytes == 3000


def test_produce_raising_msg_size_too_large_does_not_escape() -> None:
    fake = FakeProducer(max_value=500)  # a producer limit the sink was not told of
    producer = sink(fake)
    producer.deliver([rejection(9, b"z" * 900)])
    assert len(fake.produced) == 1 and fake.produced[0].value is None


def test_a_letter_that_cannot_fit_even_without_its_parts_is_refused_without_producing() -> None:
    fake = FakeProducer()
    producer = sink(fake, limit=SizeLimit(1_000_000, lambda timeout: 16, topic_bytes=16))
    with pytest.raises(DeadLetterRefused, match=r"limit of 16 bytes .*raise the topic's max.message.bytes"):
        producer.deliver([rejection(1)])
    assert fake.produced == []


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), "not authorized"),
        (KafkaError(KafkaError.CLUSTER_AUTHORIZATION_FAILED), "not authorized"),
        (KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED), "authentication failed"),
        (KafkaError(KafkaError.INVALID_CONFIG), "invalid or unsupported configuration"),
        (KafkaError(KafkaError.UNSUPPORTED_VERSION), "invalid or unsupported configuration"),
        (KafkaError(KafkaError.INVALID_RECORD), "invalid or unsupported configuration"),
        (KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, fatal=True), "fatal error"),
        (KafkaError(KafkaError._MSG_TIMED_OUT), None),
        (KafkaError(KafkaError._TRANSPORT), None),
        (KafkaError(KafkaError.NOT_ENOUGH_REPLICAS, retriable=True), None),
        (KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION, retriable=True), None),
        (KafkaError(KafkaError.LEADER_NOT_AVAILABLE, retriable=True), None),
    ],
)
def test_permanent_refusals_halt_and_everything_else_is_retried(error: KafkaError, refused: str | None) -> None:
    for fake in (FakeProducer(decide=lambda letter: error), FakeProducer(raises=error)):  # report, or produce()
        producer = sink(fake)
        with pytest.raises(DeadLetterRefused if refused else DeadLetterUnavailable) as caught:
            producer.deliver([rejection(3)])
        failure = classify_failure(caught.value)
        assert failure.label == "dead_letter"
        if refused:
            assert failure.action is Action.HALT
            assert refused in failure.reason and "orders.dlq" in failure.reason
        else:
            assert failure.action is Action.RETRY


def test_a_deleted_topic_halts_and_is_checked_again_before_producing_until_it_is_back() -> None:
    fake = FakeProducer(decide=lambda letter: KafkaError(KafkaError._MSG_TIMED_OUT),
                        topic_error=KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))  # fmt: skip
    producer = sink(fake)
    with pytest.raises(DeadLetterRefused, match=r"orders\.dlq: the topic does not exist"):
        producer.deliver([rejection(1)])
    with pytest.raises(DeadLetterRefused, match="the topic does not exist"):
        producer.deliver([rejection(1)])
    assert len(fake.produced) == 1, "the halted retry produced into a topic known to be missing"
    fake.topic_error, fake.decide = None, lambda letter: None
    producer.deliver([rejection(1)])
    assert len(fake.produced) == 2


def test_a_fatal_error_halts_once_and_the_next_attempt_uses_a_new_producer() -> None:
    broken = FakeProducer(decide=lambda letter: KafkaError(KafkaError._FATAL, "fenced", fatal=True))
    fresh = FakeProducer()
    producer = sink(broken, renew=lambda topic_bytes: fresh)
    with pytest.raises(DeadLetterRefused, match="fatal error"):
        producer.deliver([rejection(1)])
    producer.deliver([rejection(1)])
    assert broken.purged and len(fresh.produced) == 1
    assert fresh.produced[0].headers["dlq.attempts"] == b"2"


def test_the_dead_letter_producer_config_bounds_retention_and_never_creates_topics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in [key for key in os.environ if key.startswith("MICROBATCH_")]:  # `make test` sets its own
        monkeypatch.delenv(key)
    monkeypatch.setenv("MICROBATCH_DEAD_LETTER_TIMEOUT_S", "4")
    config = dead_letter_producer_config(load_settings(), 300_000)
    assert config["allow.auto.create.topics"] is False
    assert config["message.timeout.ms"] == 4000
    assert config["batch.size"] == 300_000 and config["linger.ms"] == 1
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    monkeypatch.setenv(
        "MICROBATCH_KAFKA_CONFIG",
        '{"allow.auto.create.topics": "true", "message.timeout.ms": "9000", "batch.size": "5000"}',
    )
    config = dead_letter_producer_config(load_settings(), 300_000)
    assert (config["allow.auto.create.topics"], config["message.timeout.ms"], config["batch.size"]) == (
        "true", "9000", 5000,
    )  # fmt: skip
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG", '{"batch.size": "900000"}')  # batches the topic would refuse
    assert dead_letter_producer_config(load_settings(), 300_000)["batch.size"] == 300_000
    monkeypatch.delenv("MICROBATCH_KAFKA_CONFIG")
    assert "batch.size" not in dead_letter_producer_config(load_settings(), None)  # topic limit unknown
