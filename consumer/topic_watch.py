"""Subscribed topics the broker does not know (yet): named in /readyz, in `microbatch_topic_missing`
and in the log.

librdkafka joins no consumer group before one of its subscribed topics exists, and says so only in
a consume error. A Deployment rolled out before its topic is created must still become ready, and
an operator must still see why nothing flows: the loop asks the broker's metadata every few seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException

from consumer.telemetry import Telemetry

log = logging.getLogger("microbatch.loop")
CHECK_EVERY_S = 10.0
METADATA_TIMEOUT_S = 1.0  # per topic; a broker that does not answer ends the check at the first topic


class TopicWatch:
    """`tick()` between two steps of the loop; loop thread only."""

    def __init__(
        self, kafka: Consumer, topics: Sequence[str], telemetry: Telemetry, clock: Callable[[], float]
    ) -> None:
        self._kafka = kafka
        self._topics = tuple(topics)
        self._telemetry = telemetry
        self._clock = clock
        self._next_check = clock()  # the first tick checks
        self._missing: tuple[str, ...] = ()
        self._unreadable: set[str] = set()  # topics whose metadata error was logged once
        telemetry.health.subscribed = self._topics
        telemetry.topics_missing(self._topics, ())

    @property
    def missing(self) -> tuple[str, ...]:
        return self._missing

    def tick(self) -> None:
        """Every CHECK_EVERY_S: which subscribed topics the broker's metadata lacks. A broker that does
        not answer changes nothing (what was known stays; its outage is reported elsewhere)."""
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_EVERY_S
        missing = []
        for topic in self._topics:  # one small request per subscribed topic, not the whole cluster's
            try:
                found = self._kafka.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics.get(topic)
            except KafkaException:
                return
            error = None if found is None else found.error
            if found is None or (error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
                missing.append(topic)
            elif error is not None and topic not in self._unreadable:  # e.g. not authorized: not "missing"
                self._unreadable.add(topic)
                log.error("cannot read the metadata of subscribed topic %s: %s", topic, error.str())
        if tuple(missing) != self._missing:
            for topic in sorted(set(missing) - set(self._missing)):
                log.warning("subscribed topic %s does not exist: nothing of it is consumed until it is created", topic)
            for topic in sorted(set(self._missing) - set(missing)):
                log.info("subscribed topic %s exists now", topic)
        self._missing = tuple(missing)
        self._telemetry.health.missing_topics = self._missing
        self._telemetry.topics_missing(self._topics, missing)
