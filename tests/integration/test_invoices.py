"""The micro-batcher end to end: real Kafka, real PostgreSQL, `microbatch run` as a subprocess."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from devstack.verify import high_watermarks, stored_positions
from tests.support.consumer_process import MICROBATCH, ConsumerProcess, run_cli
from tests.support.kafka_io import metrics_port, scrape
from tests.support.oracle import Verdict, check, read_ledger
from tests.support.services import KafkaService, wait_until
from tests.support.timeline import timeline

PARTITIONS = 4


def _prepare(env: dict[str, str], pipeline: Path) -> None:
    result = run_cli(env, "init-db", "--pipeline", str(pipeline))
    assert result.returncode == 0, result.stderr


def _produce(env: dict[str, str], pipeline: Path, ledger: Path, count: int, *extra: str) -> None:
    result = run_cli(
        env, "produce", "--pipeline", str(pipeline), "--count", str(count), "--partitions", str(PARTITIONS),
        "--ledger", str(ledger), *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def _rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM transactions").fetchone()
    return int(row[0]) if row else 0


def _verdict(kafka: KafkaService, database_url: str, unique: str, ledgers: list[Path], copies: int = 1) -> Verdict:
    """The oracle over everything produced (tests/support/oracle.py): rows, summaries, dead letters, positions.
    A failure also prints the consumers' position decisions (their logs sit beside the first ledger)."""
    topic = f"invoices-{unique}"
    found = check(read_ledger(ledgers), database_url, kafka.bootstrap, topic, f"{topic}.dlq", f"group-{unique}",
                  PARTITIONS, dead_letter_copies_allowed=copies)  # fmt: skip
    assert found.ok, f"{found.details}\n{timeline(ledgers[0].parent, database_url, kafka.bootstrap, topic, PARTITIONS)}"
    return found


def _rows_reach(database_url: str, count: int) -> Callable[[], bool]:
    return lambda: _rows(database_url) >= count


def _caught_up(kafka: KafkaService, database_url: str, unique: str) -> Callable[[], bool]:
    topic, group = f"invoices-{unique}", f"group-{unique}"

    def check() -> bool:
        return stored_positions(database_url, group) == high_watermarks(kafka.bootstrap, topic, PARTITIONS)

    return check


def test_50k_events_over_4_partitions_match_the_expected_totals(
    kafka: KafkaService,
    database_url: str,
    service_env: dict[str, str],
    invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess],
    unique: str,
    tmp_path: Path,
) -> None:
    _prepare(service_env, invoice_pipeline)
    ledger = tmp_path / "ledger.jsonl"
    _produce(service_env, invoice_pipeline, ledger, 50_000, "--duplicate-ratio", "0.01", "--bad-ratio", "0.005",
             "--seed", "7")  # fmt: skip

    started = time.monotonic()
    consumer = consumer_factory(service_env, invoice_pipeline)
    wait_until(
        _caught_up(kafka, database_url, unique),
        timeout=180,
        what="all positions to reach the high watermarks",
    )
    print(f"drained 50,000 events in {time.monotonic() - started:.1f} s (including start-up)")
    verdict = _verdict(kafka, database_url, unique, [ledger])
    assert verdict.ledger_duplicates > 300, "the workload must contain producer duplicates"
    assert verdict.bad > 100, "the workload must contain bad messages"
    # Every producer duplicate reached the consumer and was skipped, once: the metric (counted once the
    # last write's outcome is accounted for, just after its COMMIT) and the last words agree.
    port = metrics_port(consumer.output())
    assert port is not None
    wait_until(lambda: scrape(port)["microbatch_duplicates_skipped_total"] >= verdict.ledger_duplicates,
               timeout=30, what="the last write's accounting")  # fmt: skip
    assert scrape(port)["microbatch_duplicates_skipped_total"] == verdict.ledger_duplicates
    assert consumer.terminate() == 0, consumer.output()
    final = consumer.final_counts()
    assert final is not None and final["duplicates skipped"] == verdict.ledger_duplicates
    assert final["rows written"] == _rows(database_url) == verdict.good


def test_sigkill_twice_mid_stream_loses_and_doubles_nothing(
    kafka: KafkaService,
    database_url: str,
    service_env: dict[str, str],
    invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess],
    unique: str,
    tmp_path: Path,
) -> None:
    _prepare(service_env, invoice_pipeline)
    ledger = tmp_path / "ledger.jsonl"
    # A producer running at a fixed rate while the consumer is killed twice.
    producer = subprocess.Popen(
        [str(MICROBATCH), "produce", "--pipeline", str(invoice_pipeline), "--count", "50000", "--rate", "8000",
         "--partitions", str(PARTITIONS), "--duplicate-ratio", "0.01", "--seed", "11", "--ledger", str(ledger)],
        env=service_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        consumer = consumer_factory(service_env, invoice_pipeline)
        for threshold in (8_000, 25_000):
            # Polled often: the restarted consumer drains its backlog at tens of thousands of rows a
            # second, and a kill that lands once everything is written would test nothing.
            wait_until(_rows_reach(database_url, threshold), timeout=120, what=f"{threshold} rows", interval=0.02)
            consumer.kill()
            stored = sum(stored_positions(database_url, f"group-{unique}").values())
            high = sum(high_watermarks(kafka.bootstrap, f"invoices-{unique}", PARTITIONS).values())
            assert stored < high, f"the kill at {threshold} rows landed once all was written ({stored} of {high})"
            consumer = consumer_factory(service_env, invoice_pipeline)
        _, stderr = producer.communicate(timeout=180)
        assert producer.returncode == 0, stderr
    finally:
        producer.kill()
    wait_until(
        _caught_up(kafka, database_url, unique),
        timeout=180,
        what="all positions to reach the high watermarks",
    )
    assert consumer.terminate() == 0, consumer.output()
    # A kill between a flush's dead-letter produce and its COMMIT re-sends those dead letters.
    _verdict(kafka, database_url, unique, [ledger], copies=3)


def test_a_lone_message_is_flushed_within_max_wait_plus_one_second(
    kafka: KafkaService,
    database_url: str,
    service_env: dict[str, str],
    invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess],
    unique: str,
    tmp_path: Path,
) -> None:
    _prepare(service_env, invoice_pipeline)
    _produce(service_env, invoice_pipeline, tmp_path / "first.jsonl", 1, "--seed", "3", "--bad-ratio", "0")
    consumer = consumer_factory(service_env, invoice_pipeline)
    wait_until(lambda: _rows(database_url) == 1, timeout=60, what="the first message")

    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True, "acks": "all"})
    event = {
        "event_id": "5b0f3a52-4a8e-4a44-9d53-0c1e4f9a7a10", "invoice_id": "inv-lone", "user_id": "u-1",
        "item_id": "item-lone", "quantity": 3, "unit_price": 2.5, "ts": "2026-02-03T04:05:06+00:00",
    }  # fmt: skip
    producer.produce(f"invoices-{unique}", value=orjson.dumps(event), key=b"inv-lone")
    assert producer.flush(10) == 0
    acked_at = time.monotonic()
    took = wait_until(lambda: _rows(database_url) == 2, timeout=10, what="the lone message", interval=0.02)
    latency = time.monotonic() - acked_at
    print(f"lone message visible {latency:.3f} s after its ack (max_wait 0.5 s); poll took {took:.3f} s")
    # A bound that holds with the broker, PostgreSQL and the suite sharing two cores; the figure of
    # record (p99 end to end at 50% load) is the benchmark's.
    assert latency <= 0.5 + 4.5
    assert consumer.terminate() == 0


def test_two_consumers_share_the_partitions_and_totals_stay_exact(
    kafka: KafkaService,
    database_url: str,
    service_env: dict[str, str],
    invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess],
    unique: str,
    tmp_path: Path,
) -> None:
    _prepare(service_env, invoice_pipeline)
    ledgers = [tmp_path / "warmup.jsonl", tmp_path / "ledger.jsonl"]
    _produce(service_env, invoice_pipeline, ledgers[0], 1, "--seed", "5", "--bad-ratio", "0")
    first = consumer_factory(service_env, invoice_pipeline)
    second = consumer_factory(service_env, invoice_pipeline)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})

    def members() -> list[int]:
        group = admin.describe_consumer_groups([f"group-{unique}"])[f"group-{unique}"].result(timeout=10)
        return sorted(len(m.assignment.topic_partitions) for m in group.members)

    wait_until(lambda: members() == [2, 2], timeout=90, what="both consumers to own two partitions each")
    _produce(service_env, invoice_pipeline, ledgers[1], 20_000, "--duplicate-ratio", "0.01", "--bad-ratio", "0.005",
             "--seed", "9")  # fmt: skip
    wait_until(
        _caught_up(kafka, database_url, unique),
        timeout=180,
        what="all positions to reach the high watermarks",
    )
    assert members() == [2, 2]
    assert first.terminate() == 0
    assert second.terminate() == 0
    # Every row, summary and dead letter exact; and both consumers did share the work.
    verdict = _verdict(kafka, database_url, unique, ledgers)
    counts = [process.final_counts() for process in (first, second)]
    assert all(found is not None and found["rows written"] > 0 for found in counts), counts
    assert sum(found["rows written"] for found in counts if found) == verdict.good
    assert sum(found["duplicates skipped"] for found in counts if found) == verdict.ledger_duplicates


@pytest.mark.parametrize("adopt", [False, True], ids=["by default at auto_offset_reset", "adopting Kafka commits"])
def test_a_partition_without_a_stored_position_is_placed_logged_and_audited(
    kafka: KafkaService,
    database_url: str,
    service_env: dict[str, str],
    invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess],
    unique: str,
    tmp_path: Path,
    adopt: bool,
) -> None:
    """No stored row: the group's Kafka commit is adopted only when asked to (moving a group to
    microbatch); otherwise auto_offset_reset applies. Either way the choice is logged and audited."""
    from confluent_kafka import Consumer, TopicPartition

    topic, group, skipped = f"invoices-{unique}", f"group-{unique}", 100
    _prepare(service_env, invoice_pipeline)
    _produce(service_env, invoice_pipeline, tmp_path / "ledger.jsonl", 2000,
             "--bad-ratio", "0", "--duplicate-ratio", "0")  # fmt: skip
    committer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        committer.commit(offsets=[TopicPartition(topic, p, skipped) for p in range(PARTITIONS)], asynchronous=False)
    finally:
        committer.close()
    env = {**service_env, "MICROBATCH_ADOPT_KAFKA_OFFSETS": "true" if adopt else "false"}
    consumer = consumer_factory(env, invoice_pipeline)
    wait_until(_caught_up(kafka, database_url, unique), timeout=90, what="positions at the high watermarks")
    assert _rows(database_url) == 2000 - (PARTITIONS * skipped if adopt else 0)
    assert consumer.terminate() == 0
    kind = "adopted_kafka_offset" if adopt else "reset"
    logged = [line for line in consumer.output().splitlines() if f": {kind} (no stored position" in line]
    assert len(logged) == PARTITIONS, consumer.output()[-3000:]
    with psycopg.connect(database_url) as conn:
        events = conn.execute(
            "SELECT partition, kind, old_position, new_position, new_topic_id FROM microbatch_position_events "
            "WHERE consumer_group = %s ORDER BY partition", (group,)
        ).fetchall()  # fmt: skip
    start = skipped if adopt else 0
    assert [(p, k, old, new) for p, k, old, new, _ in events] == [(p, kind, None, start) for p in range(PARTITIONS)]
    assert all(topic_id for *_, topic_id in events), "the topic ID is recorded with the position"
