"""A dead letter always fits, against real Kafka and PostgreSQL: a message too large for the dead-letter
producer or topic is dead-lettered without its value (then key, then headers), described by size and
sha256, and the consumer keeps going."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import orjson

from devstack.verify import caught_up, read_topic
from tests.support.consumer_process import ConsumerProcess
from tests.support.dead_letters import (
    PARTITIONS,
    create_topic,
    init_db,
    produce_recorded,
    produce_stream,
    verdict,
)
from tests.support.kafka_io import produce_exact
from tests.support.oracle import read_ledger
from tests.support.services import KafkaService, wait_until


def test_a_message_too_large_for_the_dead_letter_topic_is_dead_lettered_without_its_value(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic, dlq, group = f"invoices-{unique}", f"invoices-{unique}.dlq", f"group-{unique}"
    init_db(service_env, invoice_pipeline)
    create_topic(kafka.bootstrap, topic, PARTITIONS, max_message_bytes="4194304")  # the source takes 4 MB
    create_topic(kafka.bootstrap, dlq, 1, max_message_bytes="300000")  # the dead-letter topic 300 kB
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    produce_stream(service_env, invoice_pipeline, before, 2000, "--bad-ratio", "0.02", "--seed", "61")
    huge = b'{"event_id": "' + b"7" * 2_000_000 + b'"}'  # 2 MB: over max_message_bytes (too_large) and
    # over the producer's message.max.bytes (1,000,000): produce() itself refuses it whole.
    wide = b'{"event_id": "' + b"w" * 500_000  # 500 kB, not JSON: fits the producer, not the topic
    extra = produce_recorded(kafka.bootstrap, topic, [
        (1, "truncated_json", (b"huge-key", huge, [("trace-id", b"huge")])),
        (2, "truncated_json", (b"wide-key", wide, [("trace-id", b"wide")])),
    ])  # fmt: skip
    produce_stream(service_env, invoice_pipeline, after, 2000, "--bad-ratio", "0.02", "--seed", "62")

    consumer = consumer_factory(service_env, invoice_pipeline)
    wait_until(lambda: caught_up(database_url, group, kafka.bootstrap, topic, PARTITIONS) or not consumer.running(),
               timeout=120, what="the consumer to catch up")  # fmt: skip
    assert consumer.running(), consumer.output()[-3000:]
    assert consumer.terminate() == 0, consumer.output()[-3000:]

    ledger = read_ledger([before]) + extra + read_ledger([after])
    found = verdict(kafka.bootstrap, database_url, unique, ledger, copies=1)  # every message where it must be
    assert found.bad > 2 and found.good > 3000
    letters = {(int(r.headers["dlq.original.partition"]), int(r.headers["dlq.original.offset"])): r
               for r in read_topic(kafka.bootstrap, dlq)}  # fmt: skip
    for entry, value, reason, trace in (
        (extra[0], huge, "too_large", "huge"),
        (extra[1], wide, "invalid_json", "wide"),
    ):
        letter = letters[(entry["partition"], entry["offset"])]
        assert letter.value is None, "the value was not omitted"
        assert letter.key == f"{trace}-key".encode(), "the key fits: it is kept"
        assert letter.headers["dlq.reason"] == reason
        assert letter.headers["dlq.value.omitted"] == "true"
        assert letter.headers["dlq.value.bytes"] == str(len(value))
        assert letter.headers["dlq.value.sha256"] == hashlib.sha256(value).hexdigest()
        assert letter.headers["dlq.original.topic"] == topic
        assert letter.headers["trace-id"] == trace, "the original headers are kept"
    omitted = [r for r in letters.values() if r.headers.get("dlq.value.omitted")]
    assert len(omitted) == 2, "only the two letters that do not fit lose their value"


def test_a_key_or_headers_too_large_for_the_topic_are_omitted_like_a_value(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str,
) -> None:  # fmt: skip
    topic, dlq, group = f"invoices-{unique}", f"invoices-{unique}.dlq", f"group-{unique}"
    init_db(service_env, invoice_pipeline)
    create_topic(kafka.bootstrap, topic, 1, max_message_bytes="4194304")
    create_topic(kafka.bootstrap, dlq, 1, max_message_bytes="200000")
    big_key, big_header = b"k" * 400_000, b"h" * 400_000
    good = orjson.dumps({"event_id": "0b7e7a8e-6c1a-4c1e-9a51-0c2b4f0f7d10", "invoice_id": "i-1",
                         "user_id": "u-1", "item_id": "item-1", "quantity": 2, "unit_price": 1.5,
                         "ts": "2026-02-03T04:05:06Z"})  # fmt: skip
    sent = produce_exact(kafka.bootstrap, topic, [
        (big_key, b"{not json", [("trace-id", b"t-key")]),
        (b"small-key", b"{not json either", [("trace-id", b"t-headers"), ("blob", big_header)]),
        (b"good", good, None),
    ])  # fmt: skip
    consumer = consumer_factory(service_env, invoice_pipeline)
    wait_until(lambda: caught_up(database_url, group, kafka.bootstrap, topic, 1) or not consumer.running(),
               timeout=60, what="the consumer to catch up")  # fmt: skip
    assert consumer.running(), consumer.output()[-3000:]
    assert consumer.terminate() == 0
    letters = {int(r.headers["dlq.original.offset"]): r for r in read_topic(kafka.bootstrap, dlq)}
    assert sorted(letters) == [sent[0].offset, sent[1].offset]
    keyless = letters[sent[0].offset]
    assert keyless.key is None and keyless.value == b"{not json"
    assert keyless.headers["dlq.key.omitted"] == "true"
    assert keyless.headers["dlq.key.bytes"] == str(len(big_key))
    assert keyless.headers["dlq.key.sha256"] == hashlib.sha256(big_key).hexdigest()
    assert keyless.headers["trace-id"] == "t-key"
    headerless = letters[sent[1].offset]
    assert (headerless.key, headerless.value) == (b"small-key", b"{not json either")
    assert headerless.headers["dlq.headers.omitted"] == "true"
    assert "blob" not in headerless.headers and "trace-id" not in headerless.headers
    assert headerless.headers["dlq.reason"] == "invalid_json"
