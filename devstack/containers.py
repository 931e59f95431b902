"""The Testcontainers backend: Kafka and PostgreSQL in containers, through any engine that answers the
Docker API (Docker, or podman's `system service` socket: devstack.engine.api_socket).

The images default to the local ones `make images` builds (devstack.images); MICROBATCH_KAFKA_IMAGE and
MICROBATCH_POSTGRES_IMAGE choose others of the same style (apache/kafka:4.x, postgres:15). Both run on
the host's network, listening on 127.0.0.1 at free ports: Kafka must advertise the address clients
reach, which a published port only reveals after the start, and a published port listens on every
interface. So testcontainers' generic `DockerContainer` is used rather than its Kafka and PostgreSQL
modules (whose set-up assumes published ports); readiness is checked by protocol, as for local
processes. Ryuk (testcontainers' reaper) is an image that cannot be pulled here: it is disabled, and
every container is stopped and removed by the caller's stop function.
"""

from __future__ import annotations

import gc
import os
import secrets
import warnings
from collections.abc import Callable
from typing import Any

import psycopg

from devstack import images
from devstack.kafka_server import broker_ready
from devstack.process import free_port, wait_for

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # read when testcontainers is imported


def kafka_image() -> str:
    return os.environ.get("MICROBATCH_KAFKA_IMAGE", images.KAFKA)


def postgres_image() -> str:
    return os.environ.get("MICROBATCH_POSTGRES_IMAGE", images.POSTGRES)


def docker_available(timeout: int = 3) -> bool:
    """True when a Docker API (DOCKER_HOST, else the default socket) answers a ping within `timeout` s."""
    # docker-py leaves its unix socket to the garbage collector when the daemon is absent; collect
    # it here, where the ResourceWarning is expected, not in whichever test runs next.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker  # noqa: PLC0415 - optional: present with the test dependencies only

            client = docker.from_env(timeout=timeout)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()


def _start(image: str, env: dict[str, str]) -> Any:
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415

    container: Any = DockerContainer(image).with_kwargs(network_mode="host")
    for name, value in env.items():
        container.with_env(name, value)
    container.start()
    return container


def _stopper(container: Any) -> Callable[[], None]:
    def stop() -> None:
        container.stop()  # stops and removes it (and its anonymous volumes)

    return stop


def start_kafka_container(timeout: float = 120.0) -> tuple[str, Callable[[], None], str]:
    """Start a KRaft broker; return (bootstrap servers, stop function, label). Ready at protocol level."""
    image = kafka_image()
    port, controller = free_port(), free_port()
    bootstrap = f"127.0.0.1:{port}"
    container = _start(image, {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{bootstrap}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@127.0.0.1:{controller}",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_HEALTHCHECK_BOOTSTRAP": bootstrap,
    })  # fmt: skip
    try:
        wait_for(lambda: broker_ready(bootstrap), timeout=timeout, what=f"Kafka container {image} on {bootstrap}",
                 interval=0.5)  # fmt: skip
    except BaseException:
        container.stop()
        raise
    return bootstrap, _stopper(container), f"container {image}"


def start_postgres_container(timeout: float = 60.0) -> tuple[str, Callable[[], None], str]:
    """Start PostgreSQL 15; return (libpq URL of a superuser, stop function, label)."""
    image = postgres_image()
    port, password = free_port(), secrets.token_hex(12)
    container = _start(image, {
        "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": password, "POSTGRES_DB": "postgres",
        "PGPORT": str(port), "POSTGRES_LISTEN_ADDRESSES": "127.0.0.1",
    })  # fmt: skip
    url = f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"

    def ready() -> bool:
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    try:
        wait_for(ready, timeout=timeout, what=f"PostgreSQL container {image} on port {port}", interval=0.3)
    except BaseException:
        container.stop()
        raise
    return url, _stopper(container), f"container {image}"
