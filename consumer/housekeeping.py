"""Every few seconds, between two steps of the loop: buffer and lag gauges, and a database ping when idle.

Loop thread only; the ping goes through the writer thread.
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.flow import FlowControl
from consumer.pending import Pending
from consumer.positions import Positions
from consumer.telemetry import Telemetry
from consumer.window import Window
from consumer.writer_thread import WriterThread

HOUSEKEEPING_INTERVAL_S = 2.0
IDLE_PING_INTERVAL_S = 5.0


class Housekeeping:
    """Gauges that are not updated by events, and the idle database check behind readiness."""

    def __init__(
        self,
        kafka: Consumer,
        writer: WriterThread,
        *,
        positions: Positions,
        window: Window,
        pending: Pending,
        flow: FlowControl,
        telemetry: Telemetry,
        clock: Callable[[], float],
    ) -> None:
        self._kafka = kafka
        self._writer = writer
        self._positions = positions
        self._window = window
        self._pending = pending
        self._flow = flow
        self._telemetry = telemetry
        self._clock = clock
        self._next_at = 0.0
        self._last_database_contact = clock()

    def database_contacted(self) -> None:
        """A write committed: the database answered just now."""
        self._last_database_contact = self._clock()

    def tick(self) -> None:
        now = self._clock()
        if now < self._next_at:
            return
        self._next_at = now + HOUSEKEEPING_INTERVAL_S
        self._telemetry.buffered(len(self._window) + len(self._pending), self._window.bytes + self._pending.bytes)
        high = {}
        for topic, partition in self._positions.partitions():
            try:
                _, high[(topic, partition)] = self._kafka.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
        self._telemetry.lag(self._positions.lag(high))
        idle = not self._flow.waiting and not self._writer.busy
        if idle and now - self._last_database_contact > IDLE_PING_INTERVAL_S:
            self._last_database_contact = now
            self._telemetry.database(ok=self._writer.call(lambda target: target.ping()))
