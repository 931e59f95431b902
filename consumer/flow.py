"""Flow control of the run loop: paused while a failed flush waits for its retry, halted on systemic
failures and an open breaker, resumed when a flush succeeds again.

While paused the loop keeps calling consume() (group membership and max.poll.interval.ms hold), but
librdkafka fetches nothing for the paused partitions. Loop thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.assignment import Assignment
from consumer.backoff import Backoff
from consumer.telemetry import Telemetry
from pipeline.errors import FailureClass
from pipeline.records import PartitionId

log = logging.getLogger("microbatch.runner")
BREAKER = "dead-letter circuit breaker"


class FlowControl:
    """Pause, retry schedule and halt state, and what they look like to the outside (metrics, health)."""

    def __init__(
        self,
        kafka: Consumer,
        assignment: Assignment,
        telemetry: Telemetry,
        clock: Callable[[], float],
        *,
        retry_initial_s: float,
        retry_max_s: float,
        halted_retry_s: float,
    ) -> None:
        self._kafka = kafka
        self._assignment = assignment
        self._telemetry = telemetry
        self._clock = clock
        self._backoff = Backoff(retry_initial_s, retry_max_s)
        self._halted_retry_s = halted_retry_s
        self.paused = False
        self.retry_at: float | None = None
        self.halted: str | None = None  # a systemic failure, or the breaker
        self.retrying: str | None = None

    @property
    def waiting(self) -> bool:
        """True while a failed flush waits for its retry."""
        return self.retry_at is not None

    def due(self) -> bool:
        return self.retry_at is not None and self._clock() >= self.retry_at

    def seconds_to_retry(self) -> float:
        return 0.0 if self.retry_at is None else max(0.0, self.retry_at - self._clock())

    def schedule_retry(self, failure: FailureClass, reason: str) -> None:
        """Pause everything and set when to try again: backoff for transient failures, a fixed
        interval (and the halted state) for systemic ones."""
        self.pause_all()
        if failure is FailureClass.TRANSIENT:
            delay = self._backoff.next_delay()
            if self.retrying != reason or self._backoff.attempts in (10, 100, 1000):
                log.warning("flush failed (transient): %s; partitions paused, retry %d in %.1f s",
                            reason, self._backoff.attempts, delay)  # fmt: skip
            self.retrying = reason
        else:
            delay = self._halted_retry_s
            if self.halted != reason:
                log.error("halted: %s. Nothing is written until this is fixed; retrying every %.0f s.", reason, delay)
            self.halted = reason
        self.retry_at = self._clock() + delay
        self.report()

    def recovered(self) -> None:
        """A flush succeeded: clear the retry state and resume every partition."""
        if self.retry_at is None and not self.paused:
            return
        if self.halted or self.retrying:
            log.info("flush succeeded again; resuming all partitions")
        self.retry_at = None
        self._backoff.reset()
        self.halted = self.retrying = None
        self.resume_all()
        self.report()

    def report(self) -> None:
        breaker = self.halted if self.halted and self.halted.startswith(BREAKER) else None
        self._telemetry.state(paused=self.paused, halted=None if breaker else self.halted, breaker=breaker)

    def pause_all(self) -> None:
        if not self.paused:
            self.paused = True
            self.pause(self._assignment.partitions())

    def resume_all(self) -> None:
        self.paused = False
        unknown = set(self._assignment.unknown())
        known = [TopicPartition(t, p) for t, p in self._assignment.partitions() if (t, p) not in unknown]
        if known:
            try:
                self._kafka.resume(known)
            except KafkaException as exc:
                log.warning("resume failed: %s", exc)

    def pause(self, pids: Iterable[PartitionId]) -> None:
        partitions = [TopicPartition(t, p) for t, p in pids]
        if partitions:
            try:
                self._kafka.pause(partitions)
            except KafkaException as exc:
                log.warning("pause failed: %s", exc)
