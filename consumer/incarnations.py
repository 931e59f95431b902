"""A topic deleted and re-created under a running consumer: its partitions are placed again.

Placement compares a partition's stored topic ID with the topic's current one when it takes the
partition, and when the broker refuses a fetch position. Neither happens when the topic is deleted
and re-created while the consumer holds its partitions but fetches nothing (every partition paused
for a database retry or a halt) and the new topic is longer than the stored positions by the time they
resume: librdkafka then fetches on from the same offsets in the new topic (it does not follow topic
IDs under a running consumer: librdkafka#3255), and the new topic's messages before those offsets
would be skipped until the next rebalance or restart.

So the loop asks the broker for the topic IDs of the partitions it reads every CHECK_EVERY_S (one
DescribeTopics request, answered in the background: the loop never waits for it), and places again
each partition still read from another incarnation than its topic's current one. Placement then
starts it over as on assignment (`topic_recreated`, audited). Its records not yet written are
dropped: those of the old topic went with it, those of the new one are read again from its start.
Loop thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from consumer.handover import Handover
from consumer.positions import Positions
from consumer.seeking import Seeker
from pipeline.records import PartitionId

log = logging.getLogger("microbatch.loop")
CHECK_EVERY_S = 10.0
REQUEST_TIMEOUT_S = 10.0  # an answer not in by then is given up, and asked for again at the next check


def moved(
    asked: Mapping[PartitionId, str], now: Mapping[PartitionId, str], current: Mapping[str, str | None]
) -> dict[PartitionId, tuple[str, str]]:
    """The partitions read from another incarnation than their topic's `current` one, with (the ID
    read from, the current ID). `asked`: the IDs being read when the broker was asked; `now`: those
    being read when it answered. A partition placed in between (its ID changed) is left out, as is a
    topic the broker did not describe (deleted and not re-created yet, or the request failed)."""
    found = {}
    for pid, read_from in asked.items():
        topic_id = current.get(pid[0])
        if now.get(pid) == read_from and topic_id is not None and topic_id != read_from:
            found[pid] = (read_from, topic_id)
    return found


class IncarnationWatch:
    """`tick()` between two steps of the loop (see the module docstring)."""

    def __init__(
        self,
        admin: AdminClient,
        positions: Positions,
        seeker: Seeker,
        handover: Handover,
        clock: Callable[[], float],
    ) -> None:
        self._admin, self._positions, self._seeker, self._handover = admin, positions, seeker, handover
        self._clock = clock
        self._next_check = clock() + CHECK_EVERY_S
        self._asked: Mapping[PartitionId, str] = {}
        self._answers: Mapping[str, Future[Any]] | None = None
        self._give_up_at = 0.0

    def tick(self) -> None:
        now = self._clock()
        if self._answers is not None:
            if not all(future.done() for future in self._answers.values()) and now < self._give_up_at:
                return
            answers, self._answers = self._answers, None
            self._act(moved(self._asked, self._positions.incarnations(), _topic_ids(answers)))
        elif now >= self._next_check:
            self._next_check = now + CHECK_EVERY_S
            self._ask(now)

    def _ask(self, now: float) -> None:
        self._asked = self._positions.incarnations()
        topics = sorted({topic for topic, _ in self._asked})
        if not topics:
            return
        try:
            self._answers = self._admin.describe_topics(TopicCollection(topics), request_timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            log.debug("cannot describe %s: %s", topics, exc)
            return
        self._give_up_at = now + 2 * REQUEST_TIMEOUT_S

    def _act(self, found: Mapping[PartitionId, tuple[str, str]]) -> None:
        if not found:
            return
        for (topic, partition), (read_from, current) in sorted(found.items()):
            log.warning("%s[%d]: topic ID changed under the running consumer (%s → %s): the topic was re-created; "
                        "placing it again", topic, partition, read_from, current)  # fmt: skip
        self._handover.settle()  # a write in flight is accounted for first, as for a refused fetch position
        self._seeker.forget(list(found))


def _topic_ids(answers: Mapping[str, Future[Any]]) -> dict[str, str | None]:
    """Each described topic's ID; None for an answer that failed or is not in."""
    found: dict[str, str | None] = {}
    for topic, future in answers.items():
        description = future.result() if future.done() and future.exception() is None else None
        found[topic] = None if description is None or description.topic_id is None else str(description.topic_id)
    return found
