"""What the run loop reports, in domain terms, translated to metrics and health. Loop thread only."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from consumer.health import Health
from consumer.metrics import Metrics
from pipeline.records import PartitionId, Record
from pipeline.writer import FlushResult


class Telemetry:
    """Owns the Metrics and the Health the HTTP server exposes."""

    def __init__(self, metrics: Metrics | None = None, health: Health | None = None) -> None:
        self.metrics = metrics or Metrics(process_metrics=False)
        self.health = health or Health()

    def consumed(self, records: Sequence[Record], size: int) -> None:
        """A consume() batch entered the window: `size` bytes in all."""
        if not records:
            return
        topic = records[0].topic
        if all(record.topic == topic for record in records):  # one topic: no per-record bookkeeping
            self.metrics.messages_consumed.labels(topic).inc(len(records))
            self.metrics.bytes_consumed.labels(topic).inc(size)
            return
        counts: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for record in records:
            counts[record.topic] += 1
            sizes[record.topic] += record.size
        for name, count in counts.items():
            self.metrics.messages_consumed.labels(name).inc(count)
            self.metrics.bytes_consumed.labels(name).inc(sizes[name])

    def flushed(
        self, trigger: str, result: FlushResult, records: Sequence[Record], seconds: float, raw_table: str
    ) -> None:
        m = self.metrics
        m.flushes.labels(trigger, "bisected" if result.bisected else "ok").inc()
        m.flush_duration.observe(seconds)
        m.batch_records.observe(len(records))
        m.batch_bytes.observe(sum(record.size for record in records))
        m.rows_written.labels(raw_table).inc(result.inserted)
        for table, rows in result.summary_rows.items():
            m.rows_written.labels(table).inc(rows)
        m.duplicates.inc(result.duplicates)
        m.skipped.inc(result.skipped)
        m.last_flush.set(time.time())
        self.health.database_ok = True

    def flush_failed(self, trigger: str, failure: str, sqlstate: str | None, *, retrying: bool, seconds: float) -> None:
        m = self.metrics
        m.flushes.labels(trigger, "retry" if retrying else "failed").inc()
        m.flush_duration.observe(seconds)
        m.retries.labels(failure, sqlstate[:2] if sqlstate else "none").inc()
        if failure != "dead_letter":
            self.health.database_ok = failure != "transient"

    def position_reset(self, reason: str) -> None:
        self.metrics.position_resets.labels(reason).inc()

    def position_gap(self, action: str) -> None:
        self.metrics.position_gaps.labels(action).inc()

    def fenced(self) -> None:
        self.metrics.fenced_writes.inc()

    def rebalance(self, kind: str, owned: int) -> None:
        self.metrics.rebalances.labels(kind).inc()
        self.metrics.assigned_partitions.set(owned)
        if kind == "assign":
            self.health.joined = True

    def released(self, partitions: Iterable[PartitionId]) -> None:
        for topic, partition in partitions:
            self.metrics.forget_partition(topic, partition)

    def state(self, *, paused: bool, halted: str | None, breaker: str | None) -> None:
        self.metrics.paused.set(1 if paused else 0)
        self.metrics.halted.set(1 if halted else 0)
        self.metrics.breaker_open.set(1 if breaker else 0)
        self.health.halted, self.health.breaker = halted, breaker

    def buffered(self, records: int, size: int) -> None:
        self.metrics.buffered_records.set(records)
        self.metrics.buffered_bytes.set(size)

    def lag(self, lags: Mapping[PartitionId, int]) -> None:
        """Messages between the stored position and the high watermark, per partition."""
        for (topic, partition), lag in lags.items():
            self.metrics.lag.labels(topic, str(partition)).set(lag)

    def database(self, ok: bool) -> None:
        self.health.database_ok = ok

    def beat(self) -> None:
        self.health.beat()
