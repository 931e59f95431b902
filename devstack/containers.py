"""The Testcontainers backend: Kafka and PostgreSQL in containers, through any engine that answers the
Docker API (Docker, or podman's `system service` socket: devstack.engine.api_socket).

The images are the local ones `make images` builds (devstack.images) when the engine has them, else the
public apache/kafka:4.1.1 and postgres:15 (a machine with Docker pulls them); MICROBATCH_KAFKA_IMAGE and
MICROBATCH_POSTGRES_IMAGE choose others of the same style. Both run on
the host's network, listening on 127.0.0.1 at free ports: Kafka must advertise the address clients
reach, which a published port only reveals after the start, and a published port listens on every
interface. So testcontainers' generic `DockerContainer` is used rather than its Kafka and PostgreSQL
modules (whose set-up assumes published ports); readiness is checked by protocol, as for local
processes. Ryuk (testcontainers' reaper) is an image that cannot be pulled here: it is disabled; every
container is stopped and removed by the caller's stop function, and is named under
DEVSTACK_CONTAINER_PREFIX so that a test session removes what a killed run left (container_name).
"""

from __future__ import annotations

import gc
import os
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from devstack import images
from devstack.kafka_server import KafkaSecurity, broker_ready, listening, security_properties
from devstack.process import free_port, wait_for

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # read when testcontainers is imported


PUBLIC_KAFKA = "apache/kafka:4.1.1"
PUBLIC_POSTGRES = "postgres:15"


def _local_or(local: str, public: str) -> str:
    """`local` when the engine has it (made by `make images`), else the public image of the same style."""
    import docker  # noqa: PLC0415 - optional: present with the test dependencies only

    client = docker.from_env()
    try:
        client.images.get(local)
        return local
    except docker.errors.ImageNotFound:
        return public
    finally:
        client.close()


def kafka_image() -> str:
    return os.environ.get("MICROBATCH_KAFKA_IMAGE") or _local_or(images.KAFKA, PUBLIC_KAFKA)


def postgres_image() -> str:
    return os.environ.get("MICROBATCH_POSTGRES_IMAGE") or _local_or(images.POSTGRES, PUBLIC_POSTGRES)


def container_name(kind: str) -> str:
    """A name under DEVSTACK_CONTAINER_PREFIX (set per test session), so that what a killed run
    leaves behind can be found and removed by name."""
    return f"{os.environ.get('DEVSTACK_CONTAINER_PREFIX', 'microbatch-tc')}-{kind}-{secrets.token_hex(4)}"


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


def _start(
    image: str, kind: str, env: dict[str, str], command: str | None = None, volumes: dict[Path, Path] | None = None
) -> Any:
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415

    container: Any = DockerContainer(image).with_kwargs(network_mode="host").with_name(container_name(kind))
    for name, value in env.items():
        container.with_env(name, value)
    for host, inside in (volumes or {}).items():
        container.with_volume_mapping(str(host), str(inside), "ro")
    if command is not None:
        container.with_command(command)
    container.start()
    return container


def _stopper(container: Any) -> Callable[[], None]:
    def stop() -> None:
        container.stop()  # stops and removes it (and its anonymous volumes)

    return stop


def _kafka_env(port: int, controller: int) -> dict[str, str]:
    """A one-node KRaft broker of the image, PLAINTEXT on `port` (127.0.0.1, the host's network)."""
    bootstrap = f"127.0.0.1:{port}"
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://{bootstrap},CONTROLLER://127.0.0.1:{controller}",
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
    }


def start_kafka_container(timeout: float = 120.0) -> tuple[str, Callable[[], None], str]:
    """Start a KRaft broker; return (bootstrap servers, stop function, label). Ready at protocol level."""
    image = kafka_image()
    port, controller = free_port(), free_port()
    bootstrap = f"127.0.0.1:{port}"
    container = _start(image, "kafka", _kafka_env(port, controller))
    try:
        wait_for(lambda: broker_ready(bootstrap), timeout=timeout, what=f"Kafka container {image} on {bootstrap}",
                 interval=0.5)  # fmt: skip
    except BaseException:
        container.stop()
        raise
    return bootstrap, _stopper(container), f"container {image}"


def start_secure_kafka_container(
    security: KafkaSecurity, timeout: float = 120.0
) -> tuple[str, str, Callable[[], None], str]:
    """A KRaft broker of the image with a SASL_SSL listener too: SCRAM users at format time
    (SCRAM_SHA_512_USERS), the PKI's directory mounted read-only, the same properties as a local
    broker's (devstack.kafka_server.security_properties). Returns (PLAINTEXT bootstrap, SASL_SSL
    bootstrap, stop function, label); ready when both listeners answer."""
    image = kafka_image()
    port, controller, sasl_port = free_port(), free_port(), free_port()
    bootstrap, sasl_bootstrap = f"127.0.0.1:{port}", f"127.0.0.1:{sasl_port}"
    mounted = Path("/etc/kafka/pki")
    env = _kafka_env(port, controller) | {
        "KAFKA_LISTENERS": f"PLAINTEXT://{bootstrap},CONTROLLER://127.0.0.1:{controller},SASL_SSL://{sasl_bootstrap}",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{bootstrap},SASL_SSL://{sasl_bootstrap}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
        "SCRAM_SHA_512_USERS": " ".join(f"{name}:{password}" for name, password in security.users.items()),
        **{_env_name(key): value for key, value in security_properties(security, mounted).items()},
    }
    container = _start(image, "kafka", env, volumes={security.pki.directory: mounted})
    try:
        wait_for(lambda: broker_ready(bootstrap) and listening(sasl_port), timeout=timeout,
                 what=f"Kafka container {image} on {bootstrap} and {sasl_bootstrap}", interval=0.5)  # fmt: skip
    except BaseException:
        container.stop()
        raise
    return bootstrap, sasl_bootstrap, _stopper(container), f"container {image} (SASL_SSL)"


def _env_name(key: str) -> str:
    """The image's variable for broker property `key` (images/kafka/entrypoint.sh decodes it back)."""
    return "KAFKA_" + key.replace("_", "__").replace("-", "___").replace(".", "_").upper()


def start_postgres_container(timeout: float = 60.0) -> tuple[str, Callable[[], None], str]:
    """Start PostgreSQL 15; return (libpq URL of a superuser, stop function, label)."""
    image = postgres_image()
    port, password = free_port(), secrets.token_hex(12)
    # On the host's network: 127.0.0.1 only (a command-line setting, which the official image passes on too).
    container = _start(image, "postgres", {
        "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": password, "POSTGRES_DB": "postgres", "PGPORT": str(port),
    }, command="-c listen_addresses=127.0.0.1")  # fmt: skip
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
