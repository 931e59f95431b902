"""What the run loop reports, in domain terms, translated to metrics and health. Loop thread only."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from consumer.health import Health
from consumer.metrics import Metrics
from pipeline.flush_result import FlushResult
from pipeline.records import PartitionId, Record, Run, records_bytes

# Spans kept per partition; past it the newest span widens (ages then err upwards, memory stays bounded).
MAX_SPANS = 1024


class Span(NamedTuple):
    """The records of one partition that one consume() call accepted: offsets first..last, and the Kafka
    timestamp of the first (ms; when the message has none, when it was accepted)."""

    first: int
    last: int
    timestamp_ms: int


class Unwritten:
    """Enough to tell the age of the oldest record not yet written, per partition, without keeping the
    records: where each run of a consume() call's records (one partition, offsets ascending) starts and
    ends, and the timestamp of its first. Together with the stored position (everything before it is
    written) that gives the oldest unwritten record's timestamp, exactly when the stored position is at
    the start of a span (a write takes whole windows, and a window whole consume() calls), else the
    span's first one (slightly older).
    """

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._spans: dict[PartitionId, deque[Span]] = {}

    def accepted(self, runs: Sequence[Run]) -> None:
        """A consume() call's accepted runs (one partition each, offsets ascending)."""
        for _, run in runs:
            self._note(run[0], run[-1].offset)

    def _note(self, first: Record, last: int) -> None:
        stamp = first.timestamp_ms if first.timestamp_ms is not None else int(self._wall() * 1000)
        spans = self._spans.setdefault((first.topic, first.partition), deque())
        if len(spans) >= MAX_SPANS:
            spans[-1] = spans[-1]._replace(last=max(spans[-1].last, last))
        else:
            spans.append(Span(first.offset, last, stamp))

    def oldest(self, pid: PartitionId, stored: int | None) -> int | None:
        """Timestamp (ms) of the oldest record accepted at or after `stored` (None: all are unwritten);
        None when there is none. Spans wholly before `stored` (written) are forgotten."""
        spans = self._spans.get(pid)
        if not spans:
            return None
        live = [span for span in spans if stored is None or span.last >= stored]
        if len(live) != len(spans):
            self._spans[pid] = deque(live)
        return min(live).timestamp_ms if live else None

    def forget(self, pids: Iterable[PartitionId]) -> None:
        """Nothing of these partitions is buffered any more (written, released or dropped)."""
        for pid in pids:
            self._spans.pop(pid, None)


class Telemetry:
    """Owns the Metrics and the Health the HTTP server exposes."""

    def __init__(self, metrics: Metrics | None = None, health: Health | None = None) -> None:
        self.metrics = metrics or Metrics(process_metrics=False)
        self.health = health or Health()
        self.unwritten = Unwritten()
        self.metrics.ready.set_function(lambda: 1.0 if self.health.ready()[0] else 0.0)

    def consumed(self, runs: Sequence[Run], size: int) -> None:
        """A consume() batch's accepted runs entered the window: `size` bytes in all."""
        if not runs:
            return
        self.unwritten.accepted(runs)
        topic = runs[0][0][0]
        if all(pid[0] == topic for pid, _ in runs):  # one topic: its totals are the batch's
            self.metrics.messages_consumed.labels(topic).inc(sum(len(run) for _, run in runs))
            self.metrics.bytes_consumed.labels(topic).inc(size)
            return
        counts: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for (name, _), run in runs:
            counts[name] += len(run)
            sizes[name] += records_bytes(run)
        for name, count in counts.items():
            self.metrics.messages_consumed.labels(name).inc(count)
            self.metrics.bytes_consumed.labels(name).inc(sizes[name])

    def flushed(
        self, trigger: str, result: FlushResult, *, records: int, size: int, seconds: float, raw_table: str
    ) -> None:
        """A write of `records` records (`size` bytes of keys and values) committed."""
        m = self.metrics
        outcome = "bisected" if result.bisected else "ok"
        m.flushes.labels(trigger, outcome).inc()
        m.flush_duration.labels(outcome).observe(seconds)
        m.batch_records.observe(records)
        m.batch_bytes.observe(size)
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
        m.flush_duration.labels("failed").observe(seconds)
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
        partitions = list(partitions)
        self.unwritten.forget(partitions)
        for topic, partition in partitions:
            self.metrics.forget_partition(topic, partition)

    def topics_missing(self, subscribed: Iterable[str], missing: Iterable[str]) -> None:
        """`microbatch_topic_missing`: 1 for each subscribed topic in `missing`, 0 for the others."""
        gone = set(missing)
        for topic in subscribed:
            self.metrics.topic_missing.labels(topic).set(1 if topic in gone else 0)

    def state(self, *, paused: bool, halted: str | None, breaker: str | None) -> None:
        self.metrics.paused.set(1 if paused else 0)
        self.metrics.halted.set(1 if halted else 0)
        self.metrics.breaker_open.set(1 if breaker else 0)
        self.health.halted, self.health.breaker = halted, breaker

    def buffered(self, records: int, size: int) -> None:
        self.metrics.buffered_records.set(records)
        self.metrics.buffered_bytes.set(size)

    def lag(self, lags: Mapping[PartitionId, int], ages: Mapping[PartitionId, float] | None = None) -> None:
        """Messages between the stored position and the high watermark, and the age (seconds) of the
        oldest message not yet written, per partition."""
        for (topic, partition), lag in lags.items():
            self.metrics.lag.labels(topic, str(partition)).set(lag)
        for (topic, partition), age in (ages or {}).items():
            self.metrics.lag_seconds.labels(topic, str(partition)).set(age)

    def database(self, ok: bool) -> None:
        self.health.database_ok = ok

    def beat(self) -> None:
        self.health.beat()
