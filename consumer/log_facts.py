"""What the broker says about the partitions being placed: topic IDs, log bounds, the group's commits.

Each call answers for many partitions in one or two requests, and answers None for what it could
not find out (the broker unreachable, a topic missing): placement then decides with less, or later.

A topic ID is never believed again once the topic was re-created from it (`left_behind`): topic IDs
are unique per creation, so only a broker answering from stale metadata can give one back, and
believing it would send a partition back to the incarnation it just left (the new topic read at the
old topic's offsets). Placement and the check of a running consumer (consumer/incarnations.py) ask
through the same LogFacts, so both refuse such an answer. Loop thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition
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
        self._left_behind: dict[str, set[str]] = {}  # topic → the IDs it was re-created from

    def left_behind(self, topic: str, topic_id: str) -> None:
        """`topic` was re-created from `topic_id`: an answer giving that ID is not believed again."""
        self._left_behind.setdefault(topic, set()).add(topic_id)

    def topic_ids(self, topics: Iterable[str]) -> dict[str, str | None]:
        """The current topic ID of each topic (its incarnation), None when it cannot be described (or
        the answer is an ID the topic was re-created from). Waits for the answer (the timeout)."""
        answers = self.describe(topics)
        for future in answers.values():
            _result(future, self._timeout_s)
        return self.answered(answers)

    def describe(self, topics: Iterable[str]) -> dict[str, Future[Any]]:
        """Ask for the topic IDs of `topics` without waiting: read the answer with `answered`."""
        wanted = sorted(set(topics))
        if not wanted:
            return {}
        try:
            return dict(self._admin.describe_topics(TopicCollection(wanted), request_timeout=self._timeout_s))
        except KafkaException as exc:
            log.debug("cannot describe %s: %s", wanted, exc)
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            return dict.fromkeys(wanted, failed)

    def answered(self, answers: Mapping[str, Future[Any]]) -> dict[str, str | None]:
        """The topic ID in each answer of `describe`; None for one that failed or is not in, and for an
        ID the topic was re-created from (see the module docstring)."""
        found: dict[str, str | None] = {}
        for topic, future in answers.items():
            description = future.result() if future.done() and future.exception() is None else None
            topic_id = None if description is None or description.topic_id is None else str(description.topic_id)
            found[topic] = None if topic_id in self._left_behind.get(topic, ()) else topic_id
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


def _result(future: Future[Any], timeout_s: float) -> Any:
    try:
        return future.result(timeout=timeout_s)
    except Exception as exc:  # a KafkaException, or a timeout: the fact stays unknown
        log.debug("broker request failed: %s", exc)
        return None
