"""Every few seconds, between two steps of the loop: buffer and lag gauges, and a database ping when idle.

Lag, per owned partition, in messages (high watermark minus stored position) and in seconds (the age
of the oldest message not yet written: the Kafka timestamp of the first buffered record at or after
the stored position, from `Telemetry.unwritten`; when nothing is buffered but the partition is behind,
how long it has been seen behind at the same stored position, a lower bound). Both keep moving while
the partitions are paused: librdkafka fetches nothing for a paused partition, so its cached high
watermark freezes; the leaders are asked then.

Loop thread only; the ping goes through the writer thread.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.flow import FlowControl
from consumer.pending import Pending
from consumer.positions import Positions
from consumer.telemetry import Telemetry
from consumer.window import Window
from consumer.writer_thread import WriterThread
from pipeline.records import PartitionId

HOUSEKEEPING_INTERVAL_S = 2.0
IDLE_PING_INTERVAL_S = 5.0
# Asking the leaders for high watermarks (while paused): per request, and for all of one tick. A
# partition left out by the budget keeps its previous figure; the next tick starts with it.
WATERMARK_TIMEOUT_S = 0.5
WATERMARK_BUDGET_S = 1.0


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
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._kafka = kafka
        self._writer = writer
        self._positions = positions
        self._window = window
        self._pending = pending
        self._flow = flow
        self._telemetry = telemetry
        self._clock = clock
        self._wall = wall
        self._next_at = 0.0
        self._last_database_contact = clock()
        self._behind: dict[PartitionId, tuple[int | None, float]] = {}  # (stored position, first seen behind)
        self._turn = 0  # where the next round of watermark requests starts

    def database_contacted(self) -> None:
        """A write committed: the database answered just now."""
        self._last_database_contact = self._clock()

    def tick(self) -> None:
        now = self._clock()
        if now < self._next_at:
            return
        self._next_at = now + HOUSEKEEPING_INTERVAL_S
        self._telemetry.buffered(len(self._window) + len(self._pending), self._window.bytes + self._pending.bytes)
        owned = self._positions.partitions()
        lags = self._positions.lag(self._high_watermarks(owned))
        self._telemetry.lag(lags, self._ages(owned, lags))
        idle = not self._flow.waiting and not self._writer.busy
        if idle and now - self._last_database_contact > IDLE_PING_INTERVAL_S:
            self._last_database_contact = now
            self._telemetry.database(ok=self._writer.call(lambda target: target.ping()))

    def _high_watermarks(self, owned: Sequence[PartitionId]) -> dict[PartitionId, int]:
        """librdkafka's cached high watermarks; while partitions are paused (retrying, halted), the
        leaders' (the cache stops moving then), as many as fit in WATERMARK_BUDGET_S."""
        high: dict[PartitionId, int] = {}
        if not (self._flow.paused or self._positions.halted()):
            for pid in owned:
                with contextlib.suppress(KafkaException):
                    high[pid] = self._kafka.get_watermark_offsets(TopicPartition(*pid), cached=True)[1]
            return high
        start = self._turn % len(owned) if owned else 0
        deadline = self._clock() + WATERMARK_BUDGET_S
        for pid in [*owned[start:], *owned[:start]]:
            left = deadline - self._clock()
            if left <= 0:
                break
            self._turn += 1
            with contextlib.suppress(KafkaException):
                timeout = min(WATERMARK_TIMEOUT_S, left)
                high[pid] = self._kafka.get_watermark_offsets(TopicPartition(*pid), timeout=timeout, cached=False)[1]
        return high

    def _ages(self, owned: Sequence[PartitionId], lags: dict[PartitionId, int]) -> dict[PartitionId, float]:
        """Seconds since the oldest message not yet written was produced, per owned partition."""
        now = self._wall()
        unwritten = self._telemetry.unwritten
        if not self._writer.busy:  # nothing in flight: a partition with nothing in the window or pending is written
            buffered = self._window.partitions() | self._pending.partitions()
            unwritten.forget(pid for pid in owned if pid not in buffered)
        ages: dict[PartitionId, float] = {}
        for pid in owned:
            stored = self._positions.stored(pid)
            stamp = unwritten.oldest(pid, stored)
            if stamp is not None:
                self._behind.pop(pid, None)
                ages[pid] = max(0.0, now - stamp / 1000)
            elif pid not in lags:
                continue  # its high watermark is not known this time: the gauge keeps its figure
            elif lags[pid] > 0:  # behind, nothing of it fetched yet: at least since it was seen so
                seen = self._behind.get(pid)
                if seen is None or seen[0] != stored:
                    self._behind[pid] = seen = (stored, now)
                ages[pid] = now - seen[1]
            else:
                self._behind.pop(pid, None)
                ages[pid] = 0.0
        for pid in set(self._behind) - set(owned):
            del self._behind[pid]
        return ages
