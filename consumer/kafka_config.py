"""librdkafka configuration for the consumer and producers, refusing settings that break guarantees."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

from consumer.dlq_limits import batch_bytes
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
    "enable.gapless.guarantee": (
        "false",
        "a dead letter the broker refuses (too large for the topic) is sent again, smaller; with the gapless "
        "guarantee librdkafka turns that refusal into a fatal error of the dead-letter producer",
    ),
}
# Settings that may not be set at all, with the reason.
NOT_ALLOWED = {
    "transactional.id": "the dead-letter producer sends each letter outside any Kafka transaction; a "
    "transactional producer refuses that",
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
        elif key in NOT_ALLOWED:
            problems.append(f"  kafka_config {key} is refused: {NOT_ALLOWED[key]}")
        elif key in OWN_SETTING:
            problems.append(f"  kafka_config {key} is refused: use the {OWN_SETTING[key]} setting instead")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))


FETCH_QUEUE_BACKOFF_MS = 10
# How our long-lived clients reconnect to brokers that are down; kafka_config may say otherwise.
# librdkafka (2.10 and later) re-bootstraps once every broker it knows is down. Measured with 2.16 and
# our only broker down: its debug log shows a re-bootstrap after each failed attempt, the broker
# decommissioned and the bootstrap server added again with no attempt behind it, an attempt every 50 ms
# (half of reconnect.backoff.ms) while a request waits (the consumer's coordinator query, always), and
# each failure logged as an ERROR, none suppressed as a repeat: 1,385 lines from the consumer in a 60 s
# outage. Without re-bootstrap librdkafka logs a repeated error once per 30 s per broker (6 to 8 lines
# in the same outage). What is given up: falling back to bootstrap.servers by itself when every known
# broker is gone for good (the whole cluster moved to new addresses between two metadata refreshes),
# after metadata.recovery.rebootstrap.trigger.ms without metadata, or when a broker asks for it
# (KIP-1102); restart the consumer then, or set metadata.recovery.strategy = rebootstrap.
RECONNECTS: dict[str, str | int | bool] = {"metadata.recovery.strategy": "none"}


def reconnects(settings: Settings) -> dict[str, str | int | bool]:
    """RECONNECTS, then kafka_config's metadata.recovery.* settings: for the admin clients, which take
    nothing else of kafka_config but its security settings."""
    given = {key: value for key, value in settings.kafka_config.items() if key.startswith("metadata.recovery.")}
    return {**RECONNECTS, **given}


def client_id(role: str) -> str:
    return f"microbatch-{role}-{socket.gethostname()}-{os.getpid()}"


def consumer_config(settings: Settings, group: str) -> dict[str, str | int | bool]:
    """The consumer's configuration: our fixed settings, then the user's passthrough (checked)."""
    check_passthrough(settings.kafka_config)
    config: dict[str, str | int | bool] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": group,
        "client.id": client_id("consumer"),
        # Never a silent jump: a stored position out of range is reported (an error event naming the
        # partition) and handled as a gap (consumer/placement.py). `auto_offset_reset` decides where a
        # partition without a stored position starts, when it is placed.
        "auto.offset.reset": "error",
        "enable.partition.eof": False,
        # Bounded prefetch: librdkafka's default queue (64 MiB) is most of our memory budget.
        "queued.max.messages.kbytes": 16384,
        "fetch.max.bytes": 16 * 1024 * 1024,
        # Once that queue is full, librdkafka postpones the next fetch by this much (1 s by default). The
        # queue fills while the loop hands a window over and drains in about half a second once it consumes
        # again; consume() then waited out the rest of that second: a stall of 40-200 ms about once a
        # second while draining a backlog (the drain rate went up 1.166x without it). With 10 ms the
        # queue is refilled long before it runs dry, and while it stays full (a slow window) the check
        # costs a wake-up per 10 ms; paused partitions (consumer/flow.py) are not fetched at all. Never 0:
        # librdkafka's fetcher would spin while the queue is full.
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        **RECONNECTS,
    }
    config.update(settings.kafka_config)
    config.update({key: required for key, (required, _) in NON_NEGOTIABLE.items()})
    return config


def producer_config(settings: Settings, role: str) -> dict[str, str | int | bool]:
    """An idempotent producer with acks=all (dead letters, replays)."""
    check_passthrough(settings.kafka_config)
    # librdkafka warns about each consumer property a producer is given (logs only).
    consumer_only = {"isolation.level", "enable.auto.commit", "enable.auto.offset.store",
                     "partition.assignment.strategy", "session.timeout.ms", "max.poll.interval.ms",
                     "queued.max.messages.kbytes", "fetch.max.bytes", "heartbeat.interval.ms",
                     "fetch.queue.backoff.ms", "group.instance.id", "queued.min.messages", "fetch.wait.max.ms",
                     "fetch.min.bytes", "max.partition.fetch.bytes", "fetch.message.max.bytes",
                     "fetch.error.backoff.ms", "auto.commit.interval.ms", "check.crcs", "group.protocol",
                     "group.remote.assignor", "enable.partition.eof"}  # fmt: skip
    config: dict[str, str | int | bool] = dict(RECONNECTS)
    config.update({key: value for key, value in settings.kafka_config.items() if key not in consumer_only})
    config.update(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "client.id": client_id(role),
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    return config


def dead_letter_producer_config(settings: Settings, topic_max_bytes: int | None) -> dict[str, str | int | bool]:
    """The dead-letter producer: `producer_config` plus defaults a user may still override in kafka_config."""
    config = producer_config(settings, "dead-letters")
    user = settings.kafka_config
    # Each flush waits for its dead letters' acknowledgements: do not linger before sending them.
    config.setdefault("linger.ms", 1)
    if "allow.auto.create.topics" not in user:
        # librdkafka's producer would otherwise re-create a deleted dead-letter topic on its own, with
        # the broker's defaults (partitions, retention, max.message.bytes): a deleted topic must halt
        # the consumer until someone re-creates it as it should be.
        config["allow.auto.create.topics"] = False
    if "message.timeout.ms" not in user:
        # librdkafka keeps an unacknowledged message for message.timeout.ms (default 300 s), retrying
        # it, while each flush gives up on it after dead_letter_timeout_s: bound the one by the other.
        config["message.timeout.ms"] = max(10, int(settings.dead_letter_timeout_s * 1000))
    if topic_max_bytes is not None:
        # A topic's max.message.bytes limits whole batches: batches that fit it, whatever batch.size says.
        fitting = batch_bytes(topic_max_bytes)
        with contextlib.suppress(ValueError):  # not a number: librdkafka refuses it, a configuration error
            config["batch.size"] = min(fitting, int(config.get("batch.size", fitting)))
    return config
