"""Bounded shutdown: SIGTERM ends `microbatch run` within shutdown_timeout_s whatever it waits for (a
database that hangs or is down, a dead-letter topic whose broker does not answer); exit 0 only when everything
buffered was written; what was cut off is rolled back and written once after a restart."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from devstack.kafka_server import KafkaServer
from devstack.postgres_server import PostgresServer
from pipeline.database import Database, SessionSettings
from tests.integration.test_dead_letter_outages import frozen
from tests.support.consumer_process import MICROBATCH, ConsumerProcess, run_cli
from tests.support.dead_letters import create_topic
from tests.support.kafka_io import port_of, sample
from tests.support.oracle import check, read_ledger
from tests.support.services import KafkaService, microbatch_waits, wait_until

SHUTDOWN_S = 6
# Python's start, the group's leave and two cores shared with the broker, PostgreSQL and the suite.
SLACK_S = 2.5
PARTITIONS = 2
EXIT_UNCLEAN = 1


def _env(service_env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**service_env, "MICROBATCH_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_S), "MICROBATCH_MAX_WAIT_MS": "200",
            "MICROBATCH_LOCK_TIMEOUT_MS": "60000", "MICROBATCH_DEAD_LETTER_TIMEOUT_S": "50",
            "MICROBATCH_IDLE_IN_TRANSACTION_TIMEOUT_MS": "120000", **extra}  # fmt: skip


def _produce(env: dict[str, str], pipeline: Path, ledger: Path, count: int, seed: int, bad: str = "0.02") -> None:
    result = run_cli(env, "produce", "--pipeline", str(pipeline), "--count", str(count), "--partitions",
                     str(PARTITIONS), "--seed", str(seed), "--bad-ratio", bad, "--ledger", str(ledger))  # fmt: skip
    assert result.returncode == 0, result.stderr


def _sigterm(consumer: ConsumerProcess) -> tuple[int, float]:
    started = time.monotonic()
    code = consumer.terminate(timeout=60)
    return code, time.monotonic() - started


def _rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM transactions").fetchone()
    return int(row[0]) if row else 0


def test_sigterm_while_the_database_hangs_ends_in_time_and_loses_nothing(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    env = _env(service_env)
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    ledger = tmp_path / "ledger.jsonl"
    _produce(env, invoice_pipeline, ledger, 2000, seed=1)
    consumer = consumer_factory(env, invoice_pipeline)
    wait_until(lambda: _rows(database_url) > 0, timeout=60, what="the first rows")
    with psycopg.connect(database_url) as blocker:
        # Every later write waits for this lock (lock_timeout is a minute): the database "hangs".
        blocker.execute("LOCK TABLE inventory IN ACCESS EXCLUSIVE MODE")
        _produce(env, invoice_pipeline, tmp_path / "more.jsonl", 500, seed=2)
        wait_until(lambda: "flushed" in consumer.output() or _stalled(database_url), timeout=30,
                   what="a write waiting for the lock")  # fmt: skip
        code, took = _sigterm(consumer)
        blocker.rollback()
    assert took <= SHUTDOWN_S + SLACK_S, f"exit took {took:.1f} s (shutdown_timeout_s = {SHUTDOWN_S})"
    assert code == EXIT_UNCLEAN, consumer.output()[-2000:]
    final = consumer_factory(env, invoice_pipeline)
    topic = f"invoices-{unique}"
    wait_until(lambda: _caught(database_url, kafka, unique), timeout=90, what="the restart to catch up")
    assert final.terminate() == 0
    verdict = check(read_ledger([ledger, tmp_path / "more.jsonl"]), database_url, kafka.bootstrap, topic,
                    f"{topic}.dlq", f"group-{unique}", PARTITIONS, dead_letter_copies_allowed=2)  # fmt: skip
    assert verdict.ok, verdict.details


def test_sigterm_while_the_dead_letter_topic_does_not_answer_ends_in_time(
    own_kafka: KafkaServer, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    """The flush waits for its dead letters' acknowledgement (dead_letter_timeout_s is 50 s here) from
    a broker that stopped answering (SIGSTOP): SIGTERM still ends the process within its shutdown
    timeout, unclean, and the window is left to the next owner."""
    env = _env({**service_env, "KAFKA_BOOTSTRAP_SERVERS": own_kafka.bootstrap},
               # One window for the whole stream, closed by time (15 s: the broker is frozen well before); the group
               # session outlasts the freeze, so the write is cut by the shutdown, not by a rebalance.
               MICROBATCH_MAX_WAIT_MS="15000", MICROBATCH_MAX_RECORDS="1000000", MICROBATCH_MAX_BYTES="1073741824",
               MICROBATCH_KAFKA_CONFIG=json.dumps({"session.timeout.ms": "60000",
                                                   "heartbeat.interval.ms": "3000"}))  # fmt: skip
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    create_topic(own_kafka.bootstrap, f"invoices-{unique}", PARTITIONS)
    consumer = consumer_factory(env, invoice_pipeline)
    port = port_of(consumer)
    wait_until(lambda: "assigned " in consumer.output(), timeout=60, what="the consumer to join its group")
    ledger = tmp_path / "ledger.jsonl"
    _produce(env, invoice_pipeline, ledger, 1000, seed=3, bad="0.2")
    consumed = f'microbatch_messages_consumed_total{{topic="invoices-{unique}"}}'
    wait_until(lambda: sample(port, consumed) >= len(read_ledger([ledger])), timeout=30,
               what="the stream to be in the open window")  # fmt: skip
    with frozen(own_kafka):
        wait_until(lambda: _stalled(database_url), timeout=60, what="the flush waiting for its dead letters")
        assert sample(port, "microbatch_halted") == 0, "waiting, not halted"
        code, took = _sigterm(consumer)
    assert took <= SHUTDOWN_S + SLACK_S, f"exit took {took:.1f} s (shutdown_timeout_s = {SHUTDOWN_S})"
    assert code == EXIT_UNCLEAN, consumer.output()[-2000:]
    assert "Traceback" not in consumer.output(), consumer.output()[-2000:]
    assert _rows(database_url) == 0, "the cut write rolled back"


def test_sigterm_while_the_database_is_down_ends_in_time(
    kafka: KafkaService, own_postgres: PostgresServer, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    env = _env(service_env, DATABASE_URL=own_postgres.url)
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    _produce(env, invoice_pipeline, tmp_path / "ledger.jsonl", 1000, seed=4)
    consumer = consumer_factory(env, invoice_pipeline)
    wait_until(lambda: _rows(own_postgres.url) > 0, timeout=60, what="the first rows")
    own_postgres.stop("immediate")
    try:
        _produce(env, invoice_pipeline, tmp_path / "more.jsonl", 500, seed=5)
        wait_until(lambda: "flush failed" in consumer.output(), timeout=60, what="a failed write")
        code, took = _sigterm(consumer)
    finally:
        own_postgres.start()
    assert took <= SHUTDOWN_S + SLACK_S, f"exit took {took:.1f} s (shutdown_timeout_s = {SHUTDOWN_S})"
    assert code == EXIT_UNCLEAN


@pytest.mark.parametrize(("idle", "user_timeout"), [(7, 12_345)])
def test_database_sessions_detect_a_dead_connection_by_keepalives(
    database_url: str, idle: int, user_timeout: int
) -> None:
    database = Database(database_url, SessionSettings(keepalive_idle_s=idle, tcp_user_timeout_ms=user_timeout))
    try:
        parameters = database.connection().info.get_parameters()
    finally:
        database.discard()
    assert parameters.get("keepalives") == "1"
    assert parameters.get("keepalives_idle") == str(idle)
    assert parameters.get("tcp_user_timeout") == str(user_timeout)


def _stalled(url: str) -> bool:
    """A microbatch backend is waiting (for a lock, or idle inside its transaction)."""
    return microbatch_waits(url, or_idle_in_transaction=True)


def _caught(url: str, kafka: KafkaService, unique: str) -> bool:
    from devstack.verify import caught_up

    return caught_up(url, f"group-{unique}", kafka.bootstrap, f"invoices-{unique}", PARTITIONS)


def test_sigterm_stops_produce_promptly_without_a_traceback(
    kafka: KafkaService, service_env: dict[str, str], invoice_pipeline: Path, unique: str, tmp_path: Path
) -> None:
    # In a container the command is PID 1, which ignores a signal it has no handler for: `produce`
    # (like `dlq replay`) must handle SIGTERM itself, or `podman stop` waits and then kills.
    topic = f"sigterm-{unique}"
    log = tmp_path / "produce.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(MICROBATCH), "produce", "--pipeline", str(invoice_pipeline), "--topic", topic, "--count",
             "1000000", "--rate", "200", "--partitions", "1"],
            env=service_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        wait_until(lambda: topic in admin.list_topics(timeout=5).topics, timeout=30, what="produce to create its topic")
        started = time.monotonic()
        process.terminate()
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert code == 143, text
    assert time.monotonic() - started < 10, text
    assert "microbatch: interrupted (SIGTERM): stopped" in text
    assert "Traceback" not in text
