"""Fixtures for integration and chaos tests: real services per session, fresh database and topics per test.

Registered for the whole suite by tests/conftest.py (`pytest_plugins`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from devstack.kafka_server import KafkaServer, start_kafka
from devstack.postgres_server import PostgresServer
from pipeline.spec_loader import builtin_dir
from tests.support.consumer_process import ConsumerProcess
from tests.support.runtime_role import OWNER_ENV, RUNTIME_ENV, ensure_runtime_role, runtime_url
from tests.support.services import (
    KafkaService,
    PostgresService,
    kafka_service,
    postgres_service,
    start_local_postgres,
    stop_local_postgres,
)


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaService]:
    with kafka_service() as service:
        yield service


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresService]:
    with postgres_service() as service:
        ensure_runtime_role(service.url)
        yield service


def _with_database(url: str, name: str, sslmode: str | None = None) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    if sslmode is not None:
        info["sslmode"] = sslmode
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


@pytest.fixture
def database_url(postgres: PostgresService) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    # The tests' own checks (and init-db, the owner's) connect in plain text, which is quicker: only the
    # consumers under test (service_env, the runtime role) come over TLS.
    url = _with_database(postgres.url, name, sslmode="disable" if postgres.ca is not None else None)
    try:
        yield url
    finally:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def unique() -> str:
    """A short suffix that makes topic and group names unique to one test."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def invoice_pipeline(tmp_path: Path, unique: str) -> Path:
    """The built-in invoice pipeline with this test's own topic, group and dead-letter topic."""
    text = (builtin_dir() / "invoices.toml").read_text()
    text = text.replace('topics = ["invoice-lines"]', f'topics = ["invoices-{unique}"]')
    text = text.replace('group = "microbatch-invoices"', f'group = "group-{unique}"')
    text = text.replace('dead_letter_topic = "invoice-lines.dlq"', f'dead_letter_topic = "invoices-{unique}.dlq"')
    path = tmp_path / "invoices.toml"
    path.write_text(text)
    return path


@pytest.fixture
def service_env(kafka: KafkaService, postgres: PostgresService, database_url: str) -> dict[str, str]:
    """Environment for `microbatch` subprocesses pointing at this test's services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROBATCH_")}
    runtime = runtime_url(database_url, postgres.ca)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap,
        # The consumer runs as the least-privilege runtime role; `init-db` as the owner (runtime_role.as_owner).
        DATABASE_URL=runtime,
        **{OWNER_ENV: database_url, RUNTIME_ENV: runtime},
        MICROBATCH_LOG_LEVEL="INFO",
        # Several consumers may run at once: each picks a free port and logs it.
        MICROBATCH_METRICS_PORT="0",
        # A killed consumer's partitions move after the session timeout: keep it short in tests.
        MICROBATCH_KAFKA_CONFIG=json.dumps({"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}),
        PYTHONUNBUFFERED="1",
        # A warning in a consumer under test is a failure, as it is inside pytest (filterwarnings = error).
        PYTHONWARNINGS="error",
    )
    return env


@pytest.fixture
def consumer_factory(tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    """Start `microbatch run` subprocesses; every one still running at the end is killed, and the test
    fails if any of them printed a Python warning."""
    started: list[ConsumerProcess] = []

    def start(env: dict[str, str], pipeline: Path, *extra: str) -> ConsumerProcess:
        log = tmp_path / f"consumer-{len(started)}.log"
        process = ConsumerProcess(env, ["run", "--pipeline", str(pipeline), *extra], log).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
    warned = {str(process.log): process.warnings()[:3] for process in started if process.warnings()}
    assert warned == {}, f"consumers under test printed warnings: {warned}"


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own (a local process, whatever DATABASE_URL says), so it can be
    stopped without disturbing others."""
    server, workdir = start_local_postgres()
    try:
        yield server
    finally:
        stop_local_postgres(server, workdir)


@pytest.fixture
def own_durable_postgres() -> Iterator[PostgresServer]:
    """Like own_postgres, with PostgreSQL's durable defaults (fsync and synchronous_commit on), and the WAL
    writer's longest delay (10 s): a commit made with synchronous_commit off then sits in memory long
    enough that a crash loses it (what the `replay` durability must survive)."""
    server, workdir = start_local_postgres(durable=True)
    try:
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
            conn.execute("SELECT pg_reload_conf()")
        yield server
    finally:
        stop_local_postgres(server, workdir)


@pytest.fixture
def own_kafka() -> Iterator[KafkaServer]:
    """A Kafka broker of this test's own (a local process, whatever KAFKA_BOOTSTRAP_SERVERS says), so it
    can be restarted without disturbing others."""
    workdir = Path(tempfile.mkdtemp(prefix="microbatch-own-kafka-", dir="/tmp"))
    server = start_kafka(workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
