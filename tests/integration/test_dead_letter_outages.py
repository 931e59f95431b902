"""The dead-letter topic failing, against real Kafka and PostgreSQL: a deleted topic halts the consumer
until it is created again (never re-created behind the operator's back), and an outage leaves no
pile-up of dead-letter copies (a retry never queues a letter again while an earlier copy waits)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka.admin import AdminClient

from devstack.kafka_server import KafkaServer
from devstack.verify import caught_up, stored_positions
from tests.support.consumer_process import ConsumerProcess
from tests.support.dead_letters import (
    DEAD_LETTER_RETRIES,
    PARTITIONS,
    create_topic,
    init_db,
    produce_stream,
    readyz,
    verdict,
)
from tests.support.kafka_io import port_of, sample
from tests.support.oracle import read_ledger
from tests.support.services import KafkaService, wait_until
from tests.support.user_paths import delete_topics


def first_bad(ledger: Path) -> dict[tuple[str, int], int]:
    """Per partition, the offset of the first bad message of `ledger`."""
    found: dict[tuple[str, int], int] = {}
    for entry in read_ledger([ledger]):
        if not entry["good"]:
            pid = (entry["topic"], entry["partition"])
            found[pid] = min(found.get(pid, entry["offset"]), entry["offset"])
    return found


def test_a_deleted_dead_letter_topic_halts_the_consumer_until_it_is_created_again(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic, dlq, group = f"invoices-{unique}", f"invoices-{unique}.dlq", f"group-{unique}"
    env = {**service_env, "MICROBATCH_HALTED_RETRY_S": "1", "MICROBATCH_DEAD_LETTER_TIMEOUT_S": "3"}
    init_db(env, invoice_pipeline)
    create_topic(kafka.bootstrap, topic, PARTITIONS)
    clean, dirty = tmp_path / "clean.jsonl", tmp_path / "dirty.jsonl"
    produce_stream(env, invoice_pipeline, clean, 2000, "--bad-ratio", "0", "--seed", "71")
    consumer = consumer_factory(env, invoice_pipeline)  # creates the dead-letter topic at start-up
    port = port_of(consumer)
    wait_until(lambda: caught_up(database_url, group, kafka.bootstrap, topic, PARTITIONS), timeout=120,
               what="the consumer to catch up")  # fmt: skip
    delete_topics(kafka.bootstrap, dlq)

    produce_stream(env, invoice_pipeline, dirty, 2000, "--bad-ratio", "0.03", "--seed", "72")
    wait_until(lambda: sample(port, "microbatch_halted") == 1, timeout=60, what="the consumer to halt")
    status, body = readyz(port)
    assert status == 503 and dlq in body and "does not exist" in body, body
    # Halted, it retries every second; each retry must find the topic still missing, and nothing moves.
    retries = sample(port, DEAD_LETTER_RETRIES)
    wait_until(lambda: sample(port, DEAD_LETTER_RETRIES) >= retries + 3, timeout=30, what="three halted retries")
    bad = first_bad(dirty)
    stored = stored_positions(database_url, group)
    assert all(stored.get(pid, 0) <= offset for pid, offset in bad.items()), (stored, bad)
    assert dlq not in AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=10).topics, (
        "the dead-letter topic was re-created by the producer"
    )
    assert consumer.running() and sample(port, "microbatch_halted") == 1
    assert consumer.output().count("halted: dead-letter topic refused") == 1, "one line for the halt"

    create_topic(kafka.bootstrap, dlq, 1)
    wait_until(lambda: caught_up(database_url, group, kafka.bootstrap, topic, PARTITIONS), timeout=120,
               what="the consumer to resume and catch up")  # fmt: skip
    wait_until(lambda: readyz(port)[0] == 200, timeout=30, what="ready again")
    assert sample(port, "microbatch_halted") == 0
    assert consumer.terminate() == 0
    found = verdict(kafka.bootstrap, database_url, unique, read_ledger([clean, dirty]), copies=2)
    assert found.bad > 20
    counts = consumer.final_counts()
    assert counts is not None and counts["duplicates skipped"] == found.ledger_duplicates


@contextmanager
def frozen(server: KafkaServer) -> Iterator[None]:
    """The broker stopped dead (SIGSTOP, like a long GC pause or a hung host), thawed on leaving."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def test_a_dead_letter_outage_leaves_at_most_two_copies_of_each_dead_letter(
    own_kafka: KafkaServer, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic, group = f"invoices-{unique}", f"group-{unique}"
    env = {
        **service_env, "KAFKA_BOOTSTRAP_SERVERS": own_kafka.bootstrap, "MICROBATCH_DEAD_LETTER_TIMEOUT_S": "3",
        "MICROBATCH_RETRY_MAX_MS": "1000", "MICROBATCH_HALTED_RETRY_S": "1",
        # One window for the whole stream, closed by time once the broker is frozen.
        "MICROBATCH_MAX_WAIT_MS": "5000", "MICROBATCH_MAX_RECORDS": "1000000", "MICROBATCH_MAX_BYTES": "1073741824",
        # The group session outlasts the freeze: the partitions stay assigned, the window is flushed.
        "MICROBATCH_KAFKA_CONFIG": json.dumps({"session.timeout.ms": "60000", "heartbeat.interval.ms": "3000"}),
    }  # fmt: skip
    init_db(env, invoice_pipeline)
    create_topic(own_kafka.bootstrap, topic, PARTITIONS)
    consumer = consumer_factory(env, invoice_pipeline)
    port = port_of(consumer)
    wait_until(lambda: "assigned " in consumer.output(), timeout=60, what="the consumer to join its group")
    ledger = tmp_path / "ledger.jsonl"
    produce_stream(env, invoice_pipeline, ledger, 1500, "--bad-ratio", "0.03", "--seed", "81")
    sent = len(read_ledger([ledger]))
    consumed = f'microbatch_messages_consumed_total{{topic="{topic}"}}'
    wait_until(lambda: sample(port, consumed) >= sent, timeout=30, what="the stream to be in the open window")

    with frozen(own_kafka):
        # The window closes, its flush cannot get the dead letters acknowledged: retried, three times.
        wait_until(lambda: sample(port, DEAD_LETTER_RETRIES) >= 3, timeout=60, what="three dead-letter retries")
        stored, bad = stored_positions(database_url, group), first_bad(ledger)
        assert all(stored.get(pid, 0) <= offset for pid, offset in bad.items()), (stored, bad)
    wait_until(lambda: caught_up(database_url, group, own_kafka.bootstrap, topic, PARTITIONS), timeout=120,
               what="the consumer to catch up after the thaw")  # fmt: skip
    assert consumer.terminate() == 0
    found = verdict(own_kafka.bootstrap, database_url, unique, read_ledger([ledger]), copies=2)
    print(f"{found.bad} bad messages, {found.dead_letters} dead letters, at most {found.most_copies} copies of one")
    assert found.bad > 20
