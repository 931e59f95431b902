"""Every Prometheus metric of microbatch, declared here with its meaning. Registry injectable.

Names: `microbatch_` prefix, base units (`_seconds`, `_bytes`), `_total` on counters; labels are
bounded (topic, partition, table, reason, trigger, outcome, kind, class) and pre-initialised where
their values are known, so dashboards show zeros instead of gaps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector, ProcessCollector

from consumer.window import Trigger

TRIGGERS = tuple(trigger.value for trigger in Trigger)
OUTCOMES = ("ok", "bisected", "retry", "failed")
REASONS = ("invalid_json", "invalid_event", "too_large", "empty", "db_rejected", "unknown_reference")
REBALANCES = ("assign", "revoke", "lost")
FAILURE_CLASSES = ("transient", "systemic", "dead_letter")
POSITION_RESETS = ("topic_recreated", "log_truncated", "reset", "adopted_kafka_offset")
GAP_ACTIONS = ("halt", "skip")

# How a flush attempt ended, for its duration (microbatch_flush_duration_seconds{outcome}).
FLUSH_DURATION_OUTCOMES = ("ok", "bisected", "failed")
# Dense around the typical flush of a 5,000-record window (p50 ≈ 80 ms, p99 ≈ 220 ms in BENCHMARKS.md),
# and up to the longest a legitimate write takes: statement_timeout_ms (120 s by default) plus lock
# and dead-letter waits.
FLUSH_BUCKETS = (
    0.005, 0.01, 0.025, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0,
)  # fmt: skip
RECORD_BUCKETS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000)
BYTE_BUCKETS = (1024, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 8_388_608, 16_777_216, 67_108_864)


class Metrics:
    """The metrics of one consumer process, registered in `registry` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process_metrics:
            # process_resident_memory_bytes, process_cpu_seconds_total, python_info.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        # counter: messages taken from Kafka into a window, by topic.
        self.messages_consumed = Counter(
            "microbatch_messages_consumed", "Messages taken from Kafka into a window", ["topic"], registry=r
        )
        # counter: bytes (key + value) of those messages, by topic.
        self.bytes_consumed = Counter(
            "microbatch_bytes_consumed",
            "Bytes (key + value) of the messages taken into a window",
            ["topic"],
            registry=r,
        )
        # histogram: records per flushed window.
        self.batch_records = Histogram(
            "microbatch_batch_records", "Records per flushed window", buckets=RECORD_BUCKETS, registry=r
        )
        # histogram: bytes per flushed window.
        self.batch_bytes = Histogram(
            "microbatch_batch_bytes", "Bytes (keys + values) per flushed window", buckets=BYTE_BUCKETS, registry=r
        )
        # histogram: wall time of one write attempt on the writer thread, by how it ended. Decoding is
        # not in it: it happens on the loop thread before the hand-over, overlapped with the previous write.
        self.flush_duration = Histogram(
            "microbatch_flush_duration_seconds",
            "Wall time of one write attempt on the writer thread: its transaction(s), bisection and dead "
            "letters, not decoding; by outcome (ok; bisected: rows isolated by bisection; failed)",
            ["outcome"],
            buckets=FLUSH_BUCKETS,
            registry=r,
        )
        # counter: flush attempts by what closed the window and how it ended
        # (ok; bisected = rows were isolated by bisection; retry = failed, will retry; failed = gave up).
        self.flushes = Counter(
            "microbatch_flushes",
            "Flush attempts by what closed the window (records, bytes, time, revoke, shutdown, halt: a partition "
            "about to halt or be placed again) and how it ended (ok; bisected: rows isolated by bisection; retry; "
            "failed)",
            ["trigger", "outcome"],
            registry=r,
        )
        # counter: rows inserted or upserted, by table.
        self.rows_written = Counter(
            "microbatch_rows_written",
            "Rows inserted (raw table) or upserted (summaries), by table",
            ["table"],
            registry=r,
        )
        # counter: valid messages skipped because their dedupe key was already written (replays, producer retries).
        self.duplicates = Counter(
            "microbatch_duplicates_skipped",
            "Valid messages skipped because their dedupe key was already written (replays, producer retries)",
            registry=r,
        )
        # counter: messages the pipeline's transform hook chose not to write (returned None).
        self.skipped = Counter(
            "microbatch_skipped", "Messages the pipeline's transform hook skipped (returned None)", registry=r
        )
        # counter: messages sent to the dead-letter topic (delivery confirmed), by reason.
        self.dead_letters = Counter(
            "microbatch_dead_letters",
            "Messages sent to the dead-letter topic, delivery confirmed, by reason",
            ["reason"],
            registry=r,
        )
        # counter: failed flush attempts (retried or not), by failure and SQLSTATE class (two characters, or "none").
        self.retries = Counter(
            "microbatch_retries",
            "Failed flush attempts, by failure (transient, systemic, dead_letter) and SQLSTATE class (2 characters, "
            "or none)",
            ["failure", "sqlstate_class"],
            registry=r,
        )
        # gauge: high watermark minus stored position, per partition owned by this consumer.
        self.lag = Gauge(
            "microbatch_consumer_lag",
            "High watermark minus stored position, per partition this consumer owns",
            ["topic", "partition"],
            registry=r,
        )
        # gauge: age of the oldest message not yet written, per partition owned (seconds; 0 when none waits).
        self.lag_seconds = Gauge(
            "microbatch_lag_seconds",
            "Age of the oldest message not yet written, per partition this consumer owns: now minus its Kafka "
            "timestamp (0 when nothing waits; while waiting messages are not fetched yet, at least how long "
            "they have been seen waiting)",
            ["topic", "partition"],
            registry=r,
        )
        # gauge: 1 while a subscribed topic does not exist (the consumer waits for it, ready all the same).
        self.topic_missing = Gauge(
            "microbatch_topic_missing",
            "1 while a subscribed topic does not exist (nothing is read from it; the consumer stays ready)",
            ["topic"],
            registry=r,
        )
        # gauge: 1 while all partitions are paused (retrying a flush).
        self.paused = Gauge(
            "microbatch_paused", "1 while all partitions are paused because a flush is being retried", registry=r
        )
        # gauge: what /readyz answers, also while start-up waits for the services (no other series moves
        # then): the one alert that covers every reason to be out of service.
        self.ready = Gauge(
            "microbatch_ready", "1 while /readyz answers 200 (read at scrape time; 0 while starting)", registry=r
        )
        # gauge: 1 while halted by a systemic failure (schema, privileges, unknown error): alert on it.
        self.halted = Gauge(
            "microbatch_halted",
            "1 while halted by a systemic failure (schema, privileges, unknown error); alert on it",
            registry=r,
        )
        # gauge: 1 while the dead-letter circuit breaker is open: alert on it.
        self.breaker_open = Gauge(
            "microbatch_breaker_open",
            "1 while the dead-letter circuit breaker is open (too much input rejected); alert on it",
            registry=r,
        )
        # counter: rebalance callbacks by kind (assign, revoke, lost).
        self.rebalances = Counter(
            "microbatch_rebalances", "Rebalance callbacks by kind (assign, revoke, lost)", ["kind"], registry=r
        )
        # counter: flushes refused by the offsets compare-and-set (another owner already wrote the range).
        self.fenced_writes = Counter(
            "microbatch_fenced_writes",
            "Flushes refused by the offsets compare-and-set: another owner had already written the range",
            registry=r,
        )
        # counter: stored positions moved outside a write, by reason (docs: "Positions you can trust").
        self.position_resets = Counter(
            "microbatch_position_resets",
            "Stored positions moved outside a write, by reason: topic_recreated (the topic was deleted and "
            "re-created), log_truncated (the log was truncated below the stored position and written again: read "
            "from where it diverged), reset (a partition without a stored position placed at auto_offset_reset), "
            "adopted_kafka_offset (placed at the group's Kafka commit)",
            ["reason"],
            registry=r,
        )
        # counter: stored positions found outside the log (retention, truncation), by what was done.
        self.position_gaps = Counter(
            "microbatch_position_gaps",
            "Stored positions found outside the log (deleted by retention, or beyond a truncated end), by "
            "action: halt (waiting for an operator) or skip (on_position_gap = skip)",
            ["action"],
            registry=r,
        )
        # gauge: records and bytes waiting in the open window plus a window being retried.
        self.buffered_records = Gauge(
            "microbatch_buffered_records",
            "Records buffered (open window plus a window being retried), not yet written",
            registry=r,
        )
        self.buffered_bytes = Gauge(
            "microbatch_buffered_bytes",
            "Bytes buffered (open window plus a window being retried), not yet written",
            registry=r,
        )
        # gauge: Unix time of the last successful flush (alert when it stops moving while lag grows).
        self.last_flush = Gauge(
            "microbatch_last_flush_timestamp_seconds", "Unix time of the last successful flush", registry=r
        )
        # gauge: partitions currently owned.
        self.assigned_partitions = Gauge(
            "microbatch_assigned_partitions", "Partitions currently owned by this consumer", registry=r
        )
        # info: version of microbatch and of the client libraries.
        self.build_info = Info(
            "microbatch_build",
            "Versions of microbatch, librdkafka, confluent-kafka, psycopg, and the pipeline name",
            registry=r,
        )
        self._initialise()

    def _initialise(self) -> None:
        for trigger in TRIGGERS:
            for outcome in OUTCOMES:
                self.flushes.labels(trigger, outcome)
        for reason in REASONS:
            self.dead_letters.labels(reason)
        for kind in REBALANCES:
            self.rebalances.labels(kind)
        for failure in FAILURE_CLASSES:
            self.retries.labels(failure, "none")
        for reason in POSITION_RESETS:
            self.position_resets.labels(reason)
        for action in GAP_ACTIONS:
            self.position_gaps.labels(action)
        for outcome in FLUSH_DURATION_OUTCOMES:
            self.flush_duration.labels(outcome)

    def tables(self, names: Iterable[str]) -> None:
        """Pre-initialise the per-table counters for the pipeline's tables."""
        for name in names:
            self.rows_written.labels(name)

    def topics(self, names: Iterable[str]) -> None:
        """Pre-initialise the per-topic series for the subscribed topics (`topic_missing` at 0)."""
        for name in names:
            self.messages_consumed.labels(name)
            self.bytes_consumed.labels(name)
            self.topic_missing.labels(name)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Stop reporting lag for a partition this consumer no longer owns."""
        for gauge in (self.lag, self.lag_seconds):
            with contextlib.suppress(KeyError):
                gauge.remove(topic, str(partition))
