"""A dead letter always fits, against real Kafka and PostgreSQL: a message too large for the dead-letter
producer or topic is dead-lettered without its value (then key, then headers), described by size and
sha256, and the consumer keeps going."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path

import orjson

from consumer.workload import InvoiceWorkload, WorkloadOptions
from devstack.verify import caught_up, high_watermarks, read_topic
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
from tests.support.oracle import Entry, read_ledger
from tests.support.raw_headers import produce_with_header_name
from tests.support.services import KafkaService, wait_until


def _drain(consumer: ConsumerProcess, kafka: KafkaService, database_url: str, unique: str, partitions: int) -> str:
    """Wait until `consumer` stored every partition's high watermark (120 s), failing if it stops
    first; stop it cleanly; its output."""
    topic, group = f"invoices-{unique}", f"group-{unique}"
    wait_until(lambda: caught_up(database_url, group, kafka.bootstrap, topic, partitions) or not consumer.running(),
               timeout=120, what="the consumer to catch up")  # fmt: skip
    assert consumer.running(), consumer.output()[-3000:]
    assert consumer.terminate() == 0, consumer.output()[-3000:]
    return consumer.output()


def test_a_message_too_large_for_the_dead_letter_topic_is_dead_lettered_without_its_value(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic, dlq = f"invoices-{unique}", f"invoices-{unique}.dlq"
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

    _drain(consumer_factory(service_env, invoice_pipeline), kafka, database_url, unique, PARTITIONS)

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
    topic, dlq = f"invoices-{unique}", f"invoices-{unique}.dlq"
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
    _drain(consumer_factory(service_env, invoice_pipeline), kafka, database_url, unique, 1)
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


def test_headers_named_in_bytes_that_are_not_utf8_never_stop_the_consumer(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    """A header name that is not UTF-8 (librdkafka, Go and Rust producers send any bytes) cannot be
    read by confluent-kafka. The good message carrying one is written (its headers are never read);
    the bad one is dead-lettered whole but for those headers, saying so; nothing halts or crashes."""
    topic, dlq = f"invoices-{unique}", f"invoices-{unique}.dlq"
    init_db(service_env, invoice_pipeline)
    create_topic(kafka.bootstrap, topic, PARTITIONS)
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    produce_stream(service_env, invoice_pipeline, before, 1000, "--bad-ratio", "0.02", "--seed", "81")
    good = [next(m for m in InvoiceWorkload(WorkloadOptions(count=5, seed=seed)).messages() if m.good).value
            for seed in (82, 83)]  # fmt: skip
    truncated = b'{"event_id": "unreadable-headers"'
    raw: list[Entry] = []
    for partition, kind, value in ((1, "good", good[0]), (2, "truncated_json", truncated), (2, "good", good[1])):
        offset = high_watermarks(kafka.bootstrap, topic, PARTITIONS)[(topic, partition)]
        produce_with_header_name(kafka.bootstrap, topic, partition, value, b"\xff\xfe-trace", b"t")
        # The ledger cannot name such a header (its names are text): the letter must carry none of them.
        raw.append({"topic": topic, "partition": partition, "offset": offset, "good": kind == "good",
                    "kind": kind, "event_id": None, "key": None, "value": base64.b64encode(value).decode(),
                    "headers": []})  # fmt: skip
    produce_stream(service_env, invoice_pipeline, after, 1000, "--bad-ratio", "0.02", "--seed", "84")

    output = _drain(consumer_factory(service_env, invoice_pipeline), kafka, database_url, unique, PARTITIONS)
    assert "Traceback" not in output and "halted" not in output, output[-3000:]

    found = verdict(kafka.bootstrap, database_url, unique, read_ledger([before]) + raw + read_ledger([after]), copies=1)
    assert found.good > 1900 and found.bad > 30
    where = ("2", str(raw[1]["offset"]))
    letters = [r for r in read_topic(kafka.bootstrap, dlq)
               if (r.headers["dlq.original.partition"], r.headers["dlq.original.offset"]) == where]  # fmt: skip
    assert len(letters) == 1, letters
    letter = letters[0]
    assert letter.value == truncated and letter.headers["dlq.reason"] == "invalid_json"
    assert letter.headers["dlq.headers.omitted"] == "true" and letter.headers["dlq.headers.unreadable"] == "true"
    assert all(name.startswith("dlq.") for name, _ in letter.raw_headers), letter.raw_headers
