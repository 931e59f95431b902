"""What the broker says about the partitions being placed: topic IDs, log bounds, the group's commits.

Each call answers for many partitions in one or two requests, and answers None for what it could
not find out (the broker unreachable, a topic missing): placement then decides with less, or later.
Loop thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec

from pipeline.records import PartitionId

log = logging.getLogger("microbatch.loop")
TIMEOUT_S = 10.0


class LogFacts:
    """Topic IDs, log start and end offsets, and Kafka-committed offsets."""

    def __init__(self, admin: AdminClient, kafka: Consumer, *, timeout_s: float = TIMEOUT_S) -> None:
        self._admin = admin
        self._kafka = kafka
        self._timeout_s = timeout_s

    def topic_ids(self, topics: Iterable[str], *, gone: str | None = None) -> dict[str, str | None]:
        """The current topic ID of each topic (its incarnation), None when it cannot be described;
        `gone` for a topic the broker says does not exist (by default None too)."""
        wanted = sorted(set(topics))
        if not wanted:
            return {}
        found: dict[str, str | None] = dict.fromkeys(wanted)
        try:
            futures = self._admin.describe_topics(TopicCollection(wanted), request_timeout=self._timeout_s)
        except KafkaException as exc:
            log.debug("cannot describe %s: %s", wanted, exc)
            return found
        for topic, future in futures.items():
            description = _result(future, self._timeout_s)
            if description is not None and description.topic_id is not None:
                found[topic] = str(description.topic_id)
            elif description is None and _missing(future):
                found[topic] = gone
        return found

    def bounds(self, pids: Sequence[PartitionId]) -> dict[PartitionId, tuple[int | None, int | None]]:
        """(log start offset, high watermark) of each partition; None where it could not be read."""
        if not pids:
            return {}
        low = self._offsets(pids, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
        high = self._offsets(pids, OffsetSpec.latest())  # type: ignore[no-untyped-call]
        return {pid: (low.get(pid), high.get(pid)) for pid in pids}

    def _offsets(self, pids: Sequence[PartitionId], spec: OffsetSpec) -> dict[PartitionId, int]:
        request = {TopicPartition(topic, partition): spec for topic, partition in pids}
        try:
            futures = self._admin.list_offsets(request, request_timeout=self._timeout_s)
        except KafkaException as exc:
            log.debug("cannot list offsets of %s: %s", list(pids), exc)
            return {}
        found = {}
        for tp, future in futures.items():
            info = _result(future, self._timeout_s)
            if info is not None and info.offset >= 0:
                found[(tp.topic, tp.partition)] = int(info.offset)
        return found

    def kafka_committed(self, pids: Sequence[PartitionId]) -> dict[PartitionId, int]:
        """The group's Kafka-committed offsets of `pids` (advisory; only adopted when asked to)."""
        if not pids:
            return {}
        try:
            found = self._kafka.committed([TopicPartition(t, p) for t, p in pids], timeout=self._timeout_s)
        except KafkaException as exc:
            log.debug("committed offsets of %s unavailable: %s", list(pids), exc)
            return {}
        return {(tp.topic, tp.partition): int(tp.offset) for tp in found if tp.error is None and tp.offset >= 0}


def _missing(future: Future[Any]) -> bool:
    """True when `future` (done) failed because the broker does not know the topic."""
    error = future.exception(timeout=0) if future.done() else None
    code = error.args[0] if isinstance(error, KafkaException) and error.args else None
    return isinstance(code, KafkaError) and code.code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def _result(future: Future[Any], timeout_s: float) -> Any:
    try:
        return future.result(timeout=timeout_s)
    except Exception as exc:  # a KafkaException, or a timeout: the fact stays unknown
        log.debug("broker request failed: %s", exc)
        return None
