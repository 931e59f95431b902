"""Failure handling against real Kafka and PostgreSQL: poison, database rejects, outages, halts, breaker."""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.cimpl import NewTopic

from consumer.produce import ensure_topic
from consumer.workload import ExpectedTotals, InvoiceWorkload, Message, WorkloadOptions
from devstack.postgres_server import PostgresServer
from devstack.verify import compare_totals, high_watermarks, read_topic, stored_positions
from tests.support.consumer_process import ConsumerProcess, run_cli
from tests.support.kafka_io import port_of, probe, produce_exact, sample
from tests.support.services import KafkaService, microbatch_waits, wait_until

PARTITIONS = 4


def good_messages(count: int, seed: int) -> list[Message]:
    return list(InvoiceWorkload(WorkloadOptions(count=count, seed=seed, items=50)).messages())


def totals_of(messages: list[Message]) -> dict[str, Any]:
    totals = ExpectedTotals()
    for m in messages:
        assert m.item_id and m.quantity and m.unit_price and m.ts
        totals.add_good(m.item_id, m.quantity, Decimal(m.unit_price), datetime.fromisoformat(m.ts))
    data: dict[str, Any] = json.loads(totals.to_json())
    return data


def assert_exact(database_url: str, expected: dict[str, Any]) -> None:
    failed = [check for check in compare_totals(database_url, expected) if not check.ok]
    assert failed == []


def caught_up(kafka: KafkaService, database_url: str, unique: str) -> Callable[[], bool]:
    topic, group = f"invoices-{unique}", f"group-{unique}"
    return lambda: stored_positions(database_url, group) == high_watermarks(kafka.bootstrap, topic, PARTITIONS)


def prepare(env: dict[str, str], pipeline: Path, kafka: KafkaService, unique: str) -> None:
    result = run_cli(env, "init-db", "--pipeline", str(pipeline))
    assert result.returncode == 0, result.stderr
    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), f"invoices-{unique}", PARTITIONS)


@pytest.fixture
def env(service_env: dict[str, str]) -> dict[str, str]:
    return {**service_env, "MICROBATCH_HALTED_RETRY_S": "1"}


def test_poison_is_dead_lettered_exactly_with_headers_and_good_rows_are_written(
    kafka: KafkaService, database_url: str, env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str,
) -> None:  # fmt: skip
    prepare(env, invoice_pipeline, kafka, unique)
    good = good_messages(4000, seed=21)
    event = orjson.loads(good[0].value)
    poison: list[tuple[str, bytes | None]] = [
        ("invalid_json", b'{"event_id": "7f0c", "quantity": '),
        ("invalid_json", b"[" * 100_000 + b"]" * 100_000),
        ("invalid_json", b'{"quantity": ' + b"9" * 10_000 + b"}"),
        ("invalid_json", orjson.dumps(event).replace(b'"quantity":', b'"quantity":NaN,"x":', 1)),
        ("invalid_json", orjson.dumps(event).replace(b'"quantity":', b'"quantity":Infinity,"x":', 1)),
        ("invalid_event", orjson.dumps({**event, "user_id": "a\u0000b"})),
        ("too_large", orjson.dumps({**event, "padding": "x" * 400_000})),
        ("invalid_event", orjson.dumps({**event, "quantity": "three"})),
        ("invalid_event", orjson.dumps({"event_id": event["event_id"]})),
        ("empty", b""),
        ("empty", None),
    ]  # fmt: skip
    batch: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = [
        (m.key, m.value, None) for m in good
    ]
    reasons: list[str | None] = [None] * len(batch)
    rng = random.Random(5)
    for reason, value in poison:
        at = rng.randrange(len(batch) + 1)
        batch.insert(at, (b"poison-key", value, [("trace-id", b"t-1"), ("dlq.reason", b"spoofed")]))
        reasons.insert(at, reason)
    sent = produce_exact(kafka.bootstrap, f"invoices-{unique}", batch)
    bad_at = {(s.partition, s.offset): reason for s, reason in zip(sent, reasons, strict=True) if reason}
    value_at = {(s.partition, s.offset): value for s, (_, value, _) in zip(sent, batch, strict=True)}

    consumer = consumer_factory({**env, "MICROBATCH_MAX_MESSAGE_BYTES": "300000"}, invoice_pipeline)
    wait_until(caught_up(kafka, database_url, unique), timeout=120, what="the consumer to catch up")
    assert consumer.running(), "the consumer crashed on poison"
    assert consumer.terminate() == 0

    dead = read_topic(kafka.bootstrap, f"invoices-{unique}.dlq")
    assert {(int(d.headers["dlq.original.partition"]), int(d.headers["dlq.original.offset"])) for d in dead} == set(
        bad_at
    )
    assert len(dead) == len(poison)
    for letter in dead:
        h = letter.headers
        where = (int(h["dlq.original.partition"]), int(h["dlq.original.offset"]))
        assert h["dlq.reason"] == bad_at[where], (where, h)
        assert h["dlq.original.topic"] == f"invoices-{unique}"
        assert h["dlq.consumer.group"] == f"group-{unique}"
        assert h["dlq.error.class"] and h["dlq.error.message"]
        assert datetime.fromisoformat(h["dlq.failed_at"]).tzinfo is not None
        assert int(h["dlq.attempts"]) >= 1
        assert h["trace-id"] == "t-1", "original headers are kept"
        assert [name for name, _ in letter.raw_headers].count("dlq.reason") == 1, (
            "ours overwrite incoming dlq.* headers"
        )
        assert letter.key == b"poison-key"
        assert (letter.value or b"") == (value_at[where] or b""), "the original value is kept byte for byte"
    assert_exact(database_url, totals_of(good))


def test_rows_the_database_rejects_are_isolated_in_log_n_statements(
    kafka: KafkaService, database_url: str, env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str,
) -> None:  # fmt: skip
    prepare(env, invoice_pipeline, kafka, unique)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions ADD CONSTRAINT no_cursed_items CHECK (item_id <> 'item-cursed')")
    messages = good_messages(10_000, seed=33)
    cursed_index = 6_789
    cursed = orjson.loads(messages[cursed_index].value)
    cursed["item_id"] = "item-cursed"
    batch: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = [
        (m.key, m.value, None) for m in messages
    ]
    batch[cursed_index] = (b"cursed", orjson.dumps(cursed), None)
    produce_exact(kafka.bootstrap, f"invoices-{unique}", batch)

    # The preloaded 10,000 close a window by count long before 20 s, however loaded the machine.
    consumer = consumer_factory(
        {**env, "MICROBATCH_MAX_RECORDS": "10000", "MICROBATCH_MAX_WAIT_MS": "20000"}, invoice_pipeline
    )
    wait_until(caught_up(kafka, database_url, unique), timeout=120, what="the consumer to catch up")

    # More cursed rows spread over a second stream, to find several at once.
    more = good_messages(3000, seed=34)
    more_batch: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = []
    cursed_more = 0
    for n, m in enumerate(more):
        if n % 500 == 7:
            cursed_more += 1
            more_batch.append((b"cursed", orjson.dumps({**orjson.loads(m.value), "item_id": "item-cursed"}), None))
        else:
            more_batch.append((m.key, m.value, None))
    produce_exact(kafka.bootstrap, f"invoices-{unique}", more_batch)
    wait_until(caught_up(kafka, database_url, unique), timeout=120, what="the consumer to catch up again")
    assert consumer.terminate() == 0

    log = consumer.output()
    found = re.search(r"isolated 1 rejected row\(s\) among 10000 records with (\d+) statements", log)
    assert found, log[-3000:]
    statements = int(found.group(1))
    print(f"1 bad row in 10,000: {statements} statements (2·log2(n) = {2 * math.log2(10_000):.1f})")
    assert statements <= 2 * math.ceil(math.log2(10_000)) + 2

    dead = read_topic(kafka.bootstrap, f"invoices-{unique}.dlq")
    assert len(dead) == 1 + cursed_more
    assert {d.headers["dlq.reason"] for d in dead} == {"db_rejected"}
    assert {d.headers["dlq.error.sqlstate"] for d in dead} == {"23514"}
    assert all("no_cursed_items" in d.headers["dlq.error.message"] for d in dead)
    assert all(orjson.loads(d.value or b"{}")["item_id"] == "item-cursed" for d in dead)
    written = [m for i, m in enumerate(messages) if i != cursed_index]
    written += [m for n, m in enumerate(more) if n % 500 != 7]
    assert_exact(database_url, totals_of(written))


def test_postgres_outage_longer_than_max_poll_interval_keeps_the_group_and_dead_letters_nothing(
    kafka: KafkaService, own_postgres: PostgresServer, env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str,
) -> None:  # fmt: skip
    database_url = own_postgres.url
    env = {
        **env, "DATABASE_URL": database_url,
        "MICROBATCH_KAFKA_CONFIG": json.dumps({"max.poll.interval.ms": "10000", "session.timeout.ms": "6000"}),
    }  # fmt: skip
    prepare(env, invoice_pipeline, kafka, unique)
    first, second = good_messages(6000, seed=41), good_messages(6000, seed=42)
    produce_exact(kafka.bootstrap, f"invoices-{unique}", [(m.key, m.value, None) for m in first])
    consumer = consumer_factory(env, invoice_pipeline)
    port = port_of(consumer)
    wait_until(caught_up(kafka, database_url, unique), timeout=120, what="the consumer to catch up")
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})

    def member_ids() -> list[str]:
        group = admin.describe_consumer_groups([f"group-{unique}"])[f"group-{unique}"].result(timeout=10)
        return sorted(m.member_id for m in group.members)

    before = member_ids()
    own_postgres.stop("fast")
    outage_started = time.monotonic()
    produce_exact(kafka.bootstrap, f"invoices-{unique}", [(m.key, m.value, None) for m in second])
    wait_until(lambda: sample(port, "microbatch_paused") == 1, timeout=30, what="the consumer to pause")
    assert probe(port, "/readyz") == 503 and probe(port, "/healthz") == 200
    # The fault lasts longer than max.poll.interval.ms (10 s): a fixed outage, not a synchronisation.
    time.sleep(max(0.0, 15 - (time.monotonic() - outage_started)))
    assert member_ids() == before, "the consumer was evicted from its group during the outage"
    own_postgres.start()
    wait_until(caught_up(kafka, database_url, unique), timeout=120, what="the consumer to catch up after the outage")
    wait_until(lambda: probe(port, "/readyz") == 200, timeout=30, what="ready again")
    assert member_ids() == before
    assert consumer.terminate() == 0
    log = consumer.output()
    assert " lost " not in log and "revoked invoices" not in log.split("received SIGTERM")[0]
    assert read_topic(kafka.bootstrap, f"invoices-{unique}.dlq") == []
    assert_exact(database_url, totals_of(first + second))


def test_dead_letter_topic_unavailable_holds_the_position_until_repaired(
    kafka: KafkaService, database_url: str, env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str,
) -> None:  # fmt: skip
    prepare(env, invoice_pipeline, kafka, unique)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    dlq = f"invoices-{unique}.dlq"
    # A dead-letter topic that refuses every message (max.message.bytes too small for any batch).
    admin.create_topics([NewTopic(dlq, num_partitions=1, replication_factor=1, config={"max.message.bytes": "16"})])[
        dlq
    ].result(timeout=30)
    good = good_messages(2000, seed=51)
    batch: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = [
        (m.key, m.value, None) for m in good
    ]
    batch.insert(1000, (b"poison", b"not json", None))
    partition_of = [n % PARTITIONS for n in range(len(batch))]
    sent = produce_exact(kafka.bootstrap, f"invoices-{unique}", batch, partition_of=partition_of)
    poison = sent[1000]
    consumer = consumer_factory({**env, "MICROBATCH_DEAD_LETTER_TIMEOUT_S": "5"}, invoice_pipeline)
    port = port_of(consumer)
    wait_until(lambda: sample(port, 'microbatch_retries_total{failure="dead_letter",sqlstate_class="none"}') >= 2,
               timeout=60, what="dead-letter failures to be retried")  # fmt: skip
    stored = stored_positions(database_url, f"group-{unique}")
    assert stored.get((f"invoices-{unique}", poison.partition), 0) <= poison.offset, (
        "moved past an undelivered dead letter"
    )
    assert read_topic(kafka.bootstrap, dlq) == []

    entry = ConfigEntry("max.message.bytes", "1048588", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource("topic", dlq, incremental_configs=[entry])
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    wait_until(caught_up(kafka, database_url, unique), timeout=120, what="the consumer to catch up after the repair")
    assert consumer.terminate() == 0
    dead = read_topic(kafka.bootstrap, dlq)
    assert {(int(d.headers["dlq.original.partition"]), int(d.headers["dlq.original.offset"])) for d in dead} == {
        (poison.partition, poison.offset)
    }
    assert_exact(database_url, totals_of(good))


def test_a_dropped_column_halts_without_dead_letters_and_recovers_when_restored(
    kafka: KafkaService, database_url: str, env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str,
) -> None:  # fmt: skip
    prepare(env, invoice_pipeline, kafka, unique)
    first, second = good_messages(3000, seed=61), good_messages(3000, seed=62)
    produce_exact(kafka.bootstrap, f"invoices-{unique}", [(m.key, m.value, None) for m in first])
    consumer = consumer_factory(env, invoice_pipeline)
    port = port_of(consumer)
    wait_until(caught_up(kafka, database_url, unique), timeout=120, what="the consumer to catch up")
    wait_until(lambda: probe(port, "/readyz") == 200, timeout=30, what="ready")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions DROP COLUMN user_id")
    produce_exact(kafka.bootstrap, f"invoices-{unique}", [(m.key, m.value, None) for m in second])
    wait_until(lambda: sample(port, "microbatch_halted") == 1, timeout=60, what="the consumer to halt")
    assert probe(port, "/readyz") == 503
    assert probe(port, "/healthz") == 200
    halted_lines = [line for line in consumer.output().splitlines() if "halted:" in line]
    assert len(halted_lines) == 1 and 'column "user_id"' in halted_lines[0], halted_lines
    assert read_topic(kafka.bootstrap, f"invoices-{unique}.dlq") == []

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions ADD COLUMN user_id text")
    wait_until(caught_up(kafka, database_url, unique), timeout=120, what="the consumer to catch up after the fix")
    wait_until(lambda: probe(port, "/readyz") == 200, timeout=30, what="ready again")
    assert sample(port, "microbatch_halted") == 0
    assert consumer.terminate() == 0
    assert read_topic(kafka.bootstrap, f"invoices-{unique}.dlq") == []
    assert_exact(database_url, totals_of(first + second))


def test_all_bad_input_trips_the_breaker_before_the_dead_letter_limit(
    kafka: KafkaService, database_url: str, env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str,
) -> None:  # fmt: skip
    prepare(env, invoice_pipeline, kafka, unique)
    limit = 200
    bad = [(None, b"{not json %d" % n, None) for n in range(3000)]
    produce_exact(kafka.bootstrap, f"invoices-{unique}", bad)  # type: ignore[arg-type]
    consumer = consumer_factory(
        {
            **env,
            "MICROBATCH_BREAKER_MAX_CONSECUTIVE": str(limit),
            "MICROBATCH_BREAKER_MIN_RECORDS": "50",
            "MICROBATCH_SHUTDOWN_TIMEOUT_S": "3",
        },
        invoice_pipeline,
    )
    port = port_of(consumer)
    wait_until(lambda: sample(port, "microbatch_breaker_open") == 1, timeout=60, what="the breaker to open")
    assert probe(port, "/readyz") == 503
    dead = read_topic(kafka.bootstrap, f"invoices-{unique}.dlq")
    print(f"breaker open with {len(dead)} dead letters (limit {limit})")
    assert len(dead) < limit
    assert stored_positions(database_url, f"group-{unique}") == {} or all(
        v == 0 for v in stored_positions(database_url, f"group-{unique}").values()
    )
    assert "dead-letter circuit breaker open" in consumer.output()
    assert consumer.terminate() in (0, 1)


def test_after_a_fenced_write_the_other_partitions_records_are_written_without_new_traffic(
    kafka: KafkaService, database_url: str, env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str,
) -> None:  # fmt: skip
    prepare(env, invoice_pipeline, kafka, unique)
    topic, group = f"invoices-{unique}", f"group-{unique}"
    first, second = good_messages(400, seed=31), good_messages(400, seed=32)
    spread = [n % PARTITIONS for n in range(len(first))]
    produce_exact(kafka.bootstrap, topic, [(m.key, m.value, None) for m in first], partition_of=spread)
    consumer = consumer_factory(env, invoice_pipeline)
    wait_until(caught_up(kafka, database_url, unique), timeout=90, what="the first messages to be written")
    with psycopg.connect(database_url) as operator:
        # Partition 0's stored row held: the next write, of every partition, waits for it.
        where = "WHERE consumer_group = %s AND topic = %s AND partition = 0"
        operator.execute(f"SELECT next_offset FROM microbatch_offsets {where} FOR UPDATE", (group, topic))  # noqa: S608
        produce_exact(kafka.bootstrap, topic, [(m.key, m.value, None) for m in second], partition_of=spread)
        wait_until(lambda: microbatch_waits(database_url), timeout=60, what="the write to wait for the row")
        # Meanwhile an operator moves partition 0 to its end (a reset to latest): the waiting write's
        # compare-and-set no longer matches, and the write is fenced. Nothing is produced after it.
        end = high_watermarks(kafka.bootstrap, topic, PARTITIONS)[(topic, 0)]
        operator.execute(f"UPDATE microbatch_offsets SET next_offset = %s {where}", (end, group, topic))  # noqa: S608
    wait_until(lambda: "fenced: stored position moved" in consumer.output(), timeout=30, what="the write to be fenced")
    # Partition 0 has nothing left to read: only the fenced write's records of the other partitions remain,
    # and they are written without waiting for new ones to close a window.
    wait_until(caught_up(kafka, database_url, unique), timeout=30, what="the other partitions' records to be written")
    assert consumer.terminate() == 0
    skipped = second[0::PARTITIONS]  # partition 0's, moved past by the operator
    assert_exact(database_url, totals_of(first + [m for m in second if m not in skipped]))
