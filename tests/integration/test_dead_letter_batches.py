"""Dead letters that each fit, refused together, against real Kafka and PostgreSQL: a topic's
max.message.bytes limits whole record batches, and the dead-letter producer's batch size is set when
it is made. When the dead-letter topic's limit is lowered while the consumer runs, a window's letters
are batched over the new limit and the broker refuses the batch. Each letter must then be sent again
whole, by itself, not without its value; and the letters after that go to a producer whose batches
fit the new limit."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource

from devstack.verify import caught_up, read_topic
from tests.support.consumer_process import ConsumerProcess
from tests.support.dead_letters import (
    PARTITIONS,
    Outgoing,
    create_topic,
    init_db,
    produce_recorded,
    produce_stream,
    verdict,
)
from tests.support.oracle import Entry, read_ledger
from tests.support.services import KafkaService, wait_until

LOWERED = 40_000  # bytes: the dead-letter topic's max.message.bytes once the consumer runs
LETTERS = 24  # per burst, on one partition: one window, about 160 kB of letters


def _lower_limit(bootstrap: str, topic: str) -> None:
    """Set `topic`'s max.message.bytes to LOWERED and wait until the broker describes it so."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entry = ConfigEntry("max.message.bytes", str(LOWERED), incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource("topic", topic, incremental_configs=[entry])
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)

    def lowered() -> bool:
        described = ConfigResource("topic", topic)
        entries = admin.describe_configs([described])[described].result(timeout=10)
        return bool(entries["max.message.bytes"].value == str(LOWERED))

    wait_until(lowered, timeout=30, what=f"{topic}'s max.message.bytes to be {LOWERED}")


def _burst(partition: int, mark: str) -> list[tuple[int, str, Outgoing]]:
    """LETTERS messages that are not JSON, 6 kB each: every one fits LOWERED, together they do not."""
    return [
        (partition, "truncated_json", (f"{mark}-{i}".encode(), f'{{"event_id": "{mark}{i}'.encode() + b"z" * 6000, []))
        for i in range(LETTERS)
    ]


def test_letters_batched_over_a_lowered_topic_limit_are_sent_again_whole(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic, dlq, group = f"invoices-{unique}", f"invoices-{unique}.dlq", f"group-{unique}"
    init_db(service_env, invoice_pipeline)
    create_topic(kafka.bootstrap, topic, PARTITIONS)
    create_topic(kafka.bootstrap, dlq, 1, max_message_bytes="1000000")  # read by the consumer at start
    stream = tmp_path / "stream.jsonl"
    produce_stream(service_env, invoice_pipeline, stream, 400, "--seed", "81")
    consumer = consumer_factory(service_env, invoice_pipeline)

    def drained() -> bool:
        assert consumer.running(), consumer.output()[-3000:]
        return caught_up(database_url, group, kafka.bootstrap, topic, PARTITIONS)

    wait_until(drained, timeout=120, what="the consumer to catch up")
    _lower_limit(kafka.bootstrap, dlq)
    first = produce_recorded(kafka.bootstrap, topic, _burst(0, "a"))
    wait_until(drained, timeout=120, what="the consumer to write the first burst")
    second = produce_recorded(kafka.bootstrap, topic, _burst(1, "b"))
    wait_until(drained, timeout=120, what="the consumer to write the second burst")
    assert consumer.terminate() == 0, consumer.output()[-3000:]

    verdict(kafka.bootstrap, database_url, unique, read_ledger([stream]) + first + second, copies=1)
    letters = {(int(r.headers["dlq.original.partition"]), int(r.headers["dlq.original.offset"])): r
               for r in read_topic(kafka.bootstrap, dlq)}  # fmt: skip
    for entry in first + second:
        letter = letters[(entry["partition"], entry["offset"])]
        assert "dlq.value.omitted" not in letter.headers, "a letter that fits the topic lost its value"
        assert letter.key == base64.b64decode(entry["key"] or "")
        assert letter.value is not None and len(letter.value) > 6000

    def attempts(burst: list[Entry]) -> list[int]:
        return [int(letters[(entry["partition"], entry["offset"])].headers["dlq.attempts"]) for entry in burst]

    assert max(attempts(first)) >= 2, "the first burst was not refused: the lowered limit was not in force yet"
    assert f"max.message.bytes of {LOWERED} bytes" in consumer.output(), "no producer was made for the lower limit"
    assert set(attempts(second)) == {1}, "the second burst was refused: its batches were not sized for the limit"
