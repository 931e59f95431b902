"""Flow control of the run loop: paused while a failed write waits for its retry, halted on systemic
failures and an open breaker, resumed when a write succeeds again.

While paused the loop keeps calling consume() (group membership and max.poll.interval.ms hold), but
librdkafka fetches nothing for the paused partitions. Loop thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.backoff import Backoff
from consumer.failures import Action, Failure
from consumer.positions import Positions
from consumer.telemetry import Telemetry
from pipeline.records import PartitionId

log = logging.getLogger("microbatch.loop")


class FlowControl:
    """Pause, retry schedule and halt state, and what they look like to the outside (metrics, health).

    `retry_reason`: why a transient failure is being retried (None: none is). `halt`: the failure
    that halted the consumer (a systemic one, or the breaker), None when not halted.
    """

    def __init__(
        self,
        kafka: Consumer,
        positions: Positions,
        telemetry: Telemetry,
        clock: Callable[[], float],
        *,
        retry_initial_s: float,
        retry_max_s: float,
        halted_retry_s: float,
        exit_on_halt: bool = False,
    ) -> None:
        self._kafka = kafka
        self._positions = positions
        self._telemetry = telemetry
        self._clock = clock
        self._backoff = Backoff(retry_initial_s, retry_max_s)
        self._halted_retry_s = halted_retry_s
        self._exit_on_halt = exit_on_halt
        self.paused = False
        self.retry_at: float | None = None
        self.halt: Failure | None = None
        self.retry_reason: str | None = None
        # Called before paused partitions resume (consumer/incarnations.py: a topic re-created while
        # they were paused must be placed again before anything is fetched from it).
        self.before_resume: Callable[[], None] = lambda: None

    @property
    def should_exit(self) -> bool:
        """Halted, and told to exit (code 3) rather than wait: let an orchestrator restart or page."""
        return self._exit_on_halt and self.halt is not None

    @property
    def waiting(self) -> bool:
        """True while a failed write waits for its retry."""
        return self.retry_at is not None

    def due(self) -> bool:
        return self.retry_at is not None and self._clock() >= self.retry_at

    def retry_now(self) -> None:
        """A retry is due at once: the partitions resume at the next step, from the retry (a
        `before_resume` that must not run where `recovered` was called, e.g. in a rebalance callback)."""
        self.retry_at = self._clock() if self.retry_at is None else min(self.retry_at, self._clock())

    def seconds_to_retry(self) -> float:
        return 0.0 if self.retry_at is None else max(0.0, self.retry_at - self._clock())

    def schedule_retry(self, failure: Failure) -> None:
        """Pause everything and set when to try again: backoff for a retry, a fixed interval (and the
        halted state) for a halt."""
        self.pause_all()
        if failure.action is Action.RETRY:
            delay = self._backoff.next_delay()
            if self.retry_reason != failure.reason or self._backoff.attempts in (10, 100, 1000):
                log.warning("flush failed (transient): %s; partitions paused, retry %d in %.1f s",
                            failure.reason, self._backoff.attempts, delay)  # fmt: skip
            self.retry_reason = failure.reason
        else:
            delay = self._halted_retry_s
            if self.halt is None or self.halt.reason != failure.reason:
                log.error("halted: %s. Nothing is written until this is fixed; retrying every %.0f s.",
                          failure.reason, delay)  # fmt: skip
            self.halt = failure
        self.retry_at = self._clock() + delay
        self.report()

    def recovered(self) -> None:
        """A write succeeded: clear the retry state and resume every partition, unless a partition is
        halted on its position (then the halt stands, and is retried)."""
        if halts := self._positions.halted():
            reason = next(iter(halts.values()))
            if self.halt is None or self.halt.reason != reason:
                self.halt = Failure(Action.HALT, "systemic", reason)
            if self.retry_at is None:
                self.retry_at = self._clock() + self._halted_retry_s
            self.pause_all()
            self.report()
            return
        if self.retry_at is None and not self.paused:
            return
        stalled = self.halt is not None or self.retry_reason is not None
        self.retry_at, self.halt = None, None
        # The backoff and the retry's reason are kept until the partitions do resume: what runs before
        # may schedule another retry, which then goes on from where this one was.
        self.before_resume()
        if self.waiting:  # it placed a partition halted, or could not check: that retry or halt stands
            return
        if stalled:
            log.info("flush succeeded again; resuming all partitions")
        self._backoff.reset()
        self.retry_reason = None
        self.resume_all()
        self.report()

    def report(self) -> None:
        halt = self.halt
        self._telemetry.state(
            paused=self.paused,
            halted=None if halt is None or halt.breaker else halt.reason,
            breaker=halt.detail if halt is not None and halt.breaker else None,
        )

    def pause_all(self) -> None:
        if not self.paused:
            self.paused = True
            self.pause(self._positions.partitions())

    def resume_all(self) -> None:
        self.paused = False
        known = [TopicPartition(t, p) for t, p in self._positions.known()]
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
