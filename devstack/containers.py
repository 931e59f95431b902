"""Testcontainers path, for machines where a Docker daemon answers.

Nothing here runs on machines without a daemon: `docker_available()` probes the daemon first
(the container constructors raise at once without one; checking for the `docker` binary is wrong).
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from typing import Any

KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"
POSTGRES_IMAGE = "postgres:15"


def docker_available(timeout: int = 3) -> bool:
    """True when a Docker daemon answers a ping within `timeout` seconds."""
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


def start_kafka_container() -> tuple[str, Callable[[], None], str]:
    """Start Kafka in KRaft mode; return (bootstrap servers, stop function, version label)."""
    from testcontainers.kafka import KafkaContainer  # noqa: PLC0415

    container: Any = KafkaContainer(image=KAFKA_IMAGE).with_kraft()
    container.start()
    return str(container.get_bootstrap_server()), container.stop, f"container {KAFKA_IMAGE}"


def start_postgres_container() -> tuple[str, Callable[[], None]]:
    """Start PostgreSQL 15; return (libpq URL, stop function)."""
    from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

    container: Any = PostgresContainer(POSTGRES_IMAGE, driver=None)
    container.start()
    return str(container.get_connection_url()), container.stop
