"""Liveness follows the writer thread's progress, and subscribed topics that do not exist are found:
pure logic, with a fake target and a fake Kafka consumer (no servers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from consumer.health import Health
from consumer.metrics import Metrics
from consumer.telemetry import Telemetry
from consumer.topic_watch import CHECK_EVERY_S, TopicWatch
from consumer.window import Trigger
from consumer.writer_thread import WriterThread
from pipeline.flush_result import FlushResult
from pipeline.records import Batch, Record


@dataclass
class SteppingTarget:
    """A write that reports progress `steps` times, each step released by the test."""

    steps: int
    health: Health
    step: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    moved: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    seen: list[tuple[bool, bool]] = field(default_factory=list)  # (writing, progress moved) after each step

    def write(self, batch: Batch, decoded: Any, sink: Any, **callbacks: Callable[..., None]) -> FlushResult:
        for _ in range(self.steps):
            assert self.step.acquire(timeout=10)
            self.health.progress = 0.0  # as if the last move were long ago
            callbacks["on_progress"]()
            self.seen.append((self.health.writing, self.health.progress > 0))
            self.moved.release()
        return FlushResult(inserted=len(batch.records))


def test_each_step_of_a_write_moves_the_liveness_clock_and_the_end_clears_it() -> None:
    health = Health(stall_after_s=60)
    target = SteppingTarget(steps=3, health=health)
    writer = WriterThread(target, sink=None, health=health)  # type: ignore[arg-type]
    batch = Batch([Record("t", 0, 0, None, b"{}")], {("t", 0): None})
    writer.submit(batch, None, Trigger.RECORDS)  # type: ignore[arg-type]
    try:
        for _ in range(3):
            target.step.release()
            assert target.moved.acquire(timeout=10)
        assert target.seen == [(True, True)] * 3
        outcome = writer.wait(10)
        assert outcome is not None and outcome.ok
        assert not health.writing
    finally:
        writer.close()


def test_a_write_that_stops_moving_fails_liveness_even_while_the_loop_turns() -> None:
    health = Health(stall_after_s=60)
    health.working(True)
    health.beat()
    assert health.alive()[0]
    health.progress = time.monotonic() - 61
    health.beat()  # the loop turns, idle: it has nothing else to do
    alive, reason = health.alive()
    assert not alive and reason.startswith("the write in flight has not moved for 6")
    health.working(False)
    assert health.alive()[0]


class FakeConsumer:
    """Answers list_topics(topic) from a dict; raises when `down`."""

    def __init__(self, topics: dict[str, KafkaError | None]) -> None:
        self.topics = topics
        self.down = False
        self.asked: list[str | None] = []

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> SimpleNamespace:
        self.asked.append(topic)
        if self.down:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        found = {t: SimpleNamespace(error=e) for t, e in self.topics.items() if topic in (None, t)}
        if topic is not None and topic not in found:
            found[topic] = SimpleNamespace(error=KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        return SimpleNamespace(topics=found)


def test_the_topic_watch_names_missing_topics_and_keeps_them_through_a_broker_outage() -> None:
    now = [0.0]
    kafka = FakeConsumer({"orders": None, "audit": KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)})
    telemetry = Telemetry(Metrics(process_metrics=False))
    watch = TopicWatch(kafka, ["orders", "refunds", "audit"], telemetry, lambda: now[0])  # type: ignore[arg-type]
    watch.tick()
    assert watch.missing == ("refunds",)  # not authorized is not "missing"
    assert telemetry.health.missing_topics == ("refunds",)
    assert kafka.asked == ["orders", "refunds", "audit"]  # per topic, never the whole cluster
    sample = telemetry.metrics.registry.get_sample_value
    assert sample("microbatch_topic_missing", {"topic": "refunds"}) == 1
    assert sample("microbatch_topic_missing", {"topic": "orders"}) == 0
    kafka.down, now[0] = True, CHECK_EVERY_S
    watch.tick()
    assert watch.missing == ("refunds",)  # what was known stays
    kafka.down, kafka.topics["refunds"], now[0] = False, None, 2 * CHECK_EVERY_S
    watch.tick()
    assert list(watch.missing) == [] and sample("microbatch_topic_missing", {"topic": "refunds"}) == 0
    asked = len(kafka.asked)
    now[0] += CHECK_EVERY_S / 2
    watch.tick()
    assert len(kafka.asked) == asked  # not before CHECK_EVERY_S
