"""The largest dead letter that can be stored: the smaller of the producer's `message.max.bytes` and
the dead-letter topic's `max.message.bytes`.

The topic's limit is read once at start-up (AdminClient.describe_configs); when it cannot be read,
the producer's limit is used alone. It is read again when the topic refuses a letter as too large or
a letter does not fit (the limit may have changed since), at most once per flush.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

log = logging.getLogger("microbatch.deadletter")

PRODUCER_DEFAULT_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes


def batch_bytes(topic_bytes: int | None) -> int:
    """The batch.size that keeps a producer's batches within a topic limit of `topic_bytes` (None:
    unknown, librdkafka's default): a topic's max.message.bytes limits whole batches, so several
    letters that each fit must not be batched into one that does not (a larger letter is still sent
    alone)."""
    return PRODUCER_DEFAULT_MAX_BYTES if topic_bytes is None else max(1, min(topic_bytes, PRODUCER_DEFAULT_MAX_BYTES))


def producer_max_bytes(config: dict[str, str | int | bool]) -> int:
    """The producer's message.max.bytes (librdkafka's default when not set)."""
    try:
        return int(config.get("message.max.bytes", PRODUCER_DEFAULT_MAX_BYTES))
    except ValueError:
        return PRODUCER_DEFAULT_MAX_BYTES


def topic_max_bytes(admin: AdminClient, topic: str, timeout: float) -> int | None:
    """The topic's max.message.bytes, or None when it cannot be read (no such topic, not allowed, no answer)."""
    resource = ConfigResource("topic", topic)
    try:
        entries = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout=timeout + 1)
        return int(entries["max.message.bytes"].value)
    except (KafkaException, KeyError, ValueError, TypeError) as exc:
        log.info("could not read max.message.bytes of %s (%s): the producer's limit sizes dead letters", topic, exc)
        return None
    except TimeoutError:
        log.info("could not read max.message.bytes of %s within %.0f s", topic, timeout)
        return None


class SizeLimit:
    """min(producer message.max.bytes, topic max.message.bytes), with the topic's read again on demand."""

    def __init__(
        self, producer_bytes: int, describe: Callable[[float], int | None] | None = None, topic_bytes: int | None = None
    ) -> None:
        self.producer_bytes = producer_bytes
        self._describe = describe
        self.topic_bytes = topic_bytes

    @property
    def bytes(self) -> int:
        return self.producer_bytes if self.topic_bytes is None else min(self.producer_bytes, self.topic_bytes)

    def refresh(self, timeout: float) -> bool:
        """Read the topic's limit (again); True when the limit changed."""
        if self._describe is None:
            return False
        before = self.bytes
        found = self._describe(timeout)
        if found is not None:
            self.topic_bytes = found
        return self.bytes != before
