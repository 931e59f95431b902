"""The container tests' services: Kafka and PostgreSQL from the local images, started through
Testcontainers over podman's Docker API socket (devstack.containers). They replace the session's
`kafka` and `postgres` fixtures for the tests in this directory only.

Where podman is not installed or the user is not root, every test here skips with that reason, which
the run's summary prints (tests/support/required.py allows these two reasons, and nothing else here).
Any other problem with the engine fails. Every container the session starts is named under a prefix
of its own, and removed at the end even if a test (or a nested pytest) was killed before its cleanup.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from devstack.containers import start_kafka_container, start_postgres_container
from devstack.engine import api_socket, run, why_unavailable
from devstack.images import build_all
from devstack.sources import Source
from tests.support.runtime_role import ensure_runtime_role
from tests.support.services import SERVICE_LOG, KafkaService, PostgresService

# The reasons a machine may lack for these tests (devstack.engine.why_unavailable); others fail.
SKIPPABLE = ("is not installed", "only as root")


@pytest.fixture(scope="session")
def engine() -> Iterator[str]:
    """The Docker API of the local engine (a DOCKER_HOST value), the images built or found cached."""
    reason = why_unavailable()
    if reason is not None:
        if any(phrase in reason for phrase in SKIPPABLE):
            pytest.skip(reason)
        pytest.fail(f"the container engine does not work: {reason}")
    build_all()  # cached by content hash: `make images` already built them, this only checks
    prefix = f"microbatch-tc-{uuid.uuid4().hex[:6]}"
    os.environ["DEVSTACK_CONTAINER_PREFIX"] = prefix  # every container of the session is named under it
    try:
        with api_socket() as docker_host:
            yield docker_host
    finally:
        os.environ.pop("DEVSTACK_CONTAINER_PREFIX", None)
        left = run("ps", "-a", "--filter", f"name=^{prefix}", "--format", "{{.Names}}", check=False).stdout.split()
        if left:
            run("rm", "-f", "-t", "0", *left, check=False, timeout=120)


@contextmanager
def _container(engine: str, start: Callable[[], tuple[str, Callable[[], None], str]], what: str) -> Iterator[str]:
    """Start one service container (devstack.containers) through `engine`; yields its address."""
    before = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = engine  # only while the client is made: other fixtures keep their own choice
    try:
        address, stop, label = start()
    finally:
        if before is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = before
    SERVICE_LOG.append(f"{what}: {label} (Testcontainers, container tests)")
    try:
        yield address
    finally:
        stop()


@pytest.fixture(scope="session")
def kafka(engine: str) -> Iterator[KafkaService]:
    with _container(engine, start_kafka_container, "Kafka") as bootstrap:
        yield KafkaService(bootstrap, Source.TESTCONTAINERS)


@pytest.fixture(scope="session")
def postgres(engine: str) -> Iterator[PostgresService]:
    with _container(engine, start_postgres_container, "PostgreSQL") as url:
        ensure_runtime_role(url)  # the consumers under test run as the runtime role (tests/support/runtime_role.py)
        yield PostgresService(url, Source.TESTCONTAINERS)
