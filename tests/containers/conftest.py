"""The container tests' services: Kafka and PostgreSQL from the local images, started through
Testcontainers over podman's Docker API socket (devstack.containers). They replace the session's
`kafka` and `postgres` fixtures for the tests in this directory only.

Where no engine can run containers (no podman, not root), every test here skips with the reason,
which the run's summary prints (tests/support/required.py allows these skips, and only these).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from devstack.containers import start_kafka_container, start_postgres_container
from devstack.engine import api_socket, why_unavailable
from devstack.images import build_all
from devstack.sources import Source
from tests.support.services import SERVICE_LOG, KafkaService, PostgresService


@pytest.fixture(scope="session")
def engine() -> Iterator[str]:
    """The Docker API of the local engine (DOCKER_HOST for the session), the images built or cached."""
    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    build_all()  # cached by content hash: `make images` already built them, this only checks
    before = os.environ.get("DOCKER_HOST")
    with api_socket() as docker_host:
        os.environ["DOCKER_HOST"] = docker_host
        try:
            yield docker_host
        finally:
            if before is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = before


@contextmanager
def _container(start: Callable[[], tuple[str, Callable[[], None], str]], what: str) -> Iterator[str]:
    """Start one service container (devstack.containers); yields its address; stops it afterwards."""
    address, stop, label = start()
    SERVICE_LOG.append(f"{what}: {label} (Testcontainers, container tests)")
    try:
        yield address
    finally:
        stop()


@pytest.fixture(scope="session")
def kafka(engine: str) -> Iterator[KafkaService]:
    with _container(start_kafka_container, "Kafka") as bootstrap:
        yield KafkaService(bootstrap, Source.TESTCONTAINERS)


@pytest.fixture(scope="session")
def postgres(engine: str) -> Iterator[PostgresService]:
    with _container(start_postgres_container, "PostgreSQL") as url:
        yield PostgresService(url, Source.TESTCONTAINERS)
