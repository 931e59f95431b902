"""The flush-duration histogram tells written windows from failed attempts and resolves the typical
flush (50-200 ms) as well as the longest legitimate one (statement_timeout_ms, 120 s by default);
microbatch_topic_missing is there for every subscribed topic from the start."""

from __future__ import annotations

from itertools import pairwise

from consumer.metrics import FLUSH_BUCKETS, Metrics
from consumer.settings import Settings
from consumer.telemetry import Telemetry
from pipeline.flush_result import FlushResult


def sample(telemetry: Telemetry, name: str, labels: dict[str, str]) -> float | None:
    return telemetry.metrics.registry.get_sample_value(name, labels)


def test_buckets_are_dense_around_the_typical_flush_and_reach_the_statement_timeout() -> None:
    typical = [b for b in FLUSH_BUCKETS if 0.05 <= b <= 0.2]
    assert len(typical) >= 8
    assert all(high / low <= 1.34 for low, high in pairwise(typical))
    timeout_s = Settings.model_fields["statement_timeout_ms"].default / 1000
    assert max(FLUSH_BUCKETS) > timeout_s >= 120


def test_written_and_failed_attempts_are_told_apart_by_outcome() -> None:
    telemetry = Telemetry()
    for outcome in ("ok", "bisected", "failed"):
        assert sample(telemetry, "microbatch_flush_duration_seconds_count", {"outcome": outcome}) == 0.0
    telemetry.flushed("time", FlushResult(inserted=1), records=1, size=2, seconds=0.08, raw_table="raw")
    telemetry.flushed("time", FlushResult(inserted=1, bisected=True), records=1, size=2, seconds=0.3, raw_table="raw")
    telemetry.flush_failed("time", "transient", "08006", retrying=True, seconds=5.0)
    assert sample(telemetry, "microbatch_flush_duration_seconds_sum", {"outcome": "ok"}) == 0.08
    assert sample(telemetry, "microbatch_flush_duration_seconds_sum", {"outcome": "bisected"}) == 0.3
    assert sample(telemetry, "microbatch_flush_duration_seconds_sum", {"outcome": "failed"}) == 5.0
    help_text = next(m.documentation for m in telemetry.metrics.registry.collect()
                     if m.name == "microbatch_flush_duration_seconds")  # fmt: skip
    assert "not decoding" in help_text


def test_topic_missing_is_zero_for_every_subscribed_topic_until_one_is_missing() -> None:
    metrics = Metrics(process_metrics=False)
    metrics.topics(["orders", "refunds"])
    telemetry = Telemetry(metrics)
    assert sample(telemetry, "microbatch_topic_missing", {"topic": "refunds"}) == 0.0
    telemetry.topics_missing(["orders", "refunds"], ["refunds"])
    assert sample(telemetry, "microbatch_topic_missing", {"topic": "refunds"}) == 1.0
    assert sample(telemetry, "microbatch_topic_missing", {"topic": "orders"}) == 0.0
    telemetry.topics_missing(["orders", "refunds"], [])
    assert sample(telemetry, "microbatch_topic_missing", {"topic": "refunds"}) == 0.0
