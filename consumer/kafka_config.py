"""librdkafka configuration for the consumer and producers, refusing settings that break guarantees."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from consumer.settings import ConfigError, Settings

# Settings microbatch relies on, with the reason a user override is refused.
NON_NEGOTIABLE: dict[str, tuple[str, str]] = {
    "enable.auto.commit": (
        "false",
        "positions are committed by microbatch after the database commit; auto-commit would mark "
        "messages done before they are written",
    ),
    "enable.auto.offset.store": (
        "false",
        "offsets are stored only for messages that are in PostgreSQL",
    ),
    "partition.assignment.strategy": (
        "cooperative-sticky",
        "rebalances must move only the partitions that change owner, so kept partitions keep their buffers",
    ),
    "isolation.level": (
        "read_committed",
        "messages of aborted Kafka transactions must never be written",
    ),
}
# Settings that have their own microbatch setting; setting them in kafka_config is a mistake.
OWN_SETTING = {
    "bootstrap.servers": "kafka_bootstrap_servers",
    "group.id": "group_id",
    "auto.offset.reset": "auto_offset_reset",
}


def _normal(value: str) -> str:
    return value.strip().lower().replace(" ", "")


def check_passthrough(extra: Mapping[str, str]) -> None:
    """Raise ConfigError naming each kafka_config key that would break a guarantee."""
    problems = []
    for key, value in extra.items():
        if key in NON_NEGOTIABLE:
            required, reason = NON_NEGOTIABLE[key]
            if _normal(str(value)) != required:
                problems.append(f"  kafka_config {key}={value} is refused: it must be {required} ({reason})")
        elif key in OWN_SETTING:
            problems.append(f"  kafka_config {key} is refused: use the {OWN_SETTING[key]} setting instead")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))


def client_id(role: str) -> str:
    return f"microbatch-{role}-{socket.gethostname()}-{os.getpid()}"


def consumer_config(settings: Settings, group: str) -> dict[str, str | int | bool]:
    """The consumer's configuration: our fixed settings, then the user's passthrough (checked)."""
    check_passthrough(settings.kafka_config)
    config: dict[str, str | int | bool] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": group,
        "client.id": client_id("consumer"),
        "auto.offset.reset": settings.auto_offset_reset,
        "enable.partition.eof": False,
        # Bounded prefetch: librdkafka's default queue (64 MiB) is most of our memory budget.
        "queued.max.messages.kbytes": 16384,
        "fetch.max.bytes": 16 * 1024 * 1024,
    }
    config.update(settings.kafka_config)
    config.update({key: required for key, (required, _) in NON_NEGOTIABLE.items()})
    return config


def producer_config(settings: Settings, role: str) -> dict[str, str | int | bool]:
    """An idempotent producer with acks=all (dead letters, replays)."""
    check_passthrough(settings.kafka_config)
    consumer_only = {"isolation.level", "enable.auto.commit", "enable.auto.offset.store",
                     "partition.assignment.strategy", "session.timeout.ms", "max.poll.interval.ms",
                     "queued.max.messages.kbytes", "fetch.max.bytes", "heartbeat.interval.ms"}  # fmt: skip
    config: dict[str, str | int | bool] = {
        key: value for key, value in settings.kafka_config.items() if key not in consumer_only
    }
    config.update(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "client.id": client_id(role),
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    return config
