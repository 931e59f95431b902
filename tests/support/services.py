"""Real Kafka and PostgreSQL for the test session: explicit env → Testcontainers → local processes."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from devstack.containers import docker_available, start_kafka_container, start_postgres_container
from devstack.kafka_server import KafkaServer, start_kafka
from devstack.postgres_server import PostgresServer, start_postgres
from devstack.sources import DATABASE_ENV, KAFKA_ENV, Source, choose_source
from devstack.tls import make_test_pki

SERVICE_LOG: list[str] = []


@dataclass
class KafkaService:
    bootstrap: str
    source: Source
    server: KafkaServer | None = None


@dataclass
class PostgresService:
    url: str
    source: Source
    server: PostgresServer | None = None

    @property
    def ca(self) -> Path | None:
        """The test CA that signed the server's certificate (None: the server has no TLS of ours)."""
        return self.server.tls.ca_cert if self.server is not None and self.server.tls is not None else None


def _scratch(prefix: str) -> Path:
    # Under /tmp (mode 1777) so the postgres user can reach it; pytest's own tmp dirs are 0700.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@contextmanager
def kafka_service() -> Iterator[KafkaService]:
    """A broker for the whole session; stopped at the end whatever happens."""
    source = choose_source(os.environ, KAFKA_ENV, docker_available)
    if source is Source.ENVIRONMENT:
        SERVICE_LOG.append(f"Kafka: {os.environ[KAFKA_ENV]} (from {KAFKA_ENV})")
        yield KafkaService(os.environ[KAFKA_ENV], source)
        return
    if source is Source.TESTCONTAINERS:
        bootstrap, stop, label = start_kafka_container()
        SERVICE_LOG.append(f"Kafka: {label} at {bootstrap} (Testcontainers)")
        try:
            yield KafkaService(bootstrap, source)
        finally:
            stop()
        return
    workdir = _scratch("microbatch-kafka-")
    server = start_kafka(workdir)
    SERVICE_LOG.append(
        f"Kafka: Apache Kafka {server.version()} at {server.bootstrap} (local JVM process, ready in "
        f"{server.startup_seconds:.1f} s, log {server.log})"
    )
    try:
        yield KafkaService(server.bootstrap, source, server)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def postgres_service() -> Iterator[PostgresService]:
    """A PostgreSQL server for the whole session; stopped at the end whatever happens."""
    source = choose_source(os.environ, DATABASE_ENV, docker_available)
    if source is Source.ENVIRONMENT:
        SERVICE_LOG.append(f"PostgreSQL: from {DATABASE_ENV}")
        yield PostgresService(os.environ[DATABASE_ENV], source)
        return
    if source is Source.TESTCONTAINERS:
        url, stop, label = start_postgres_container()
        SERVICE_LOG.append(f"PostgreSQL: {label} (Testcontainers)")
        try:
            yield PostgresService(url, source)
        finally:
            stop()
        return
    server, workdir = start_local_postgres(tls=True)
    SERVICE_LOG.append(
        f"PostgreSQL: {server.version()} on port {server.port} (local process, data {workdir}; TLS with the test "
        "CA: the consumers connect with sslmode=verify-full)"
    )
    try:
        yield PostgresService(server.url, source, server)
    finally:
        stop_local_postgres(server, workdir)


def start_local_postgres(*, durable: bool = False, tls: bool = False) -> tuple[PostgresServer, Path]:
    """A local cluster; with `tls`, a certificate from a test CA made for it (PostgresServer.tls)."""
    workdir = _scratch("microbatch-pg-")
    workdir.chmod(0o755)  # the server (the postgres user) reads its certificate from here
    pki = make_test_pki(workdir / "pki") if tls else None
    return start_postgres(workdir / "cluster" if tls else workdir, durable=durable, tls=pki), workdir


def stop_local_postgres(server: PostgresServer, workdir: Path) -> None:
    try:
        server.stop("immediate")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll `condition` until true; return the seconds it took; AssertionError naming `what` on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def microbatch_waits(database_url: str, *, or_idle_in_transaction: bool = False) -> bool:
    """A microbatch backend of this database waits for a lock (or, when asked, is idle inside its transaction)."""
    idle = " OR state = 'idle in transaction'" if or_idle_in_transaction else ""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "  # noqa: S608 - our own text
            f"AND application_name = 'microbatch' AND (wait_event_type = 'Lock'{idle})"
        ).fetchone()
    return bool(row and row[0])
