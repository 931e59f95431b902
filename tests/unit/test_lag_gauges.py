"""The lag gauges: microbatch_lag_seconds is the age of the oldest message not yet written, per
partition, and both lag gauges keep moving while the partitions are paused (librdkafka's cached high
watermarks freeze then, so the leaders are asked)."""

from __future__ import annotations

from typing import Any

from consumer.failures import Action, Failure
from consumer.flow import FlowControl
from consumer.housekeeping import HOUSEKEEPING_INTERVAL_S, Housekeeping
from consumer.pending import Pending
from consumer.positions import Positions
from consumer.telemetry import MAX_SPANS, Telemetry, Unwritten
from consumer.window import Trigger, Window, WindowPolicy
from pipeline.records import Record, ascending_runs

T0_MS = 1_800_000_000_000  # Kafka timestamps of the test records start here (ms)


def rec(offset: int, partition: int = 0, *, at_ms: int | None = None, topic: str = "t") -> Record:
    return Record(topic, partition, offset, None, b"x", (), T0_MS + offset if at_ms is None else at_ms)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeKafka:
    """Cached watermarks stay where the last fetch left them; the leaders know the real ones."""

    def __init__(self) -> None:
        self.cached: dict[tuple[str, int], int] = {}
        self.leader: dict[tuple[str, int], int] = {}
        self.asked: list[bool] = []  # `cached` of each request

    def get_watermark_offsets(self, tp: Any, timeout: float | None = None, cached: bool = False) -> tuple[int, int]:
        self.asked.append(cached)
        marks = self.cached if cached else self.leader
        return 0, marks.get((tp.topic, tp.partition), -1001)

    def pause(self, partitions: list[Any]) -> None:
        return

    def resume(self, partitions: list[Any]) -> None:
        return


class FakeWriter:
    busy = False

    def call(self, action: Any) -> bool:
        return True


class Rig:
    """Housekeeping over real positions, window, pending, flow and telemetry; fake Kafka and writer."""

    def __init__(self) -> None:
        self.clock, self.wall = Clock(100.0), Clock(T0_MS / 1000)
        self.kafka, self.writer, self.telemetry = FakeKafka(), FakeWriter(), Telemetry()
        self.positions, self.pending = Positions(), Pending()
        self.window = Window(WindowPolicy(max_records=1000, max_wait_ms=500), self.clock)
        self.flow = FlowControl(self.kafka, self.positions, self.telemetry, self.clock, retry_initial_s=0.1,  # type: ignore[arg-type]
                                retry_max_s=1.0, halted_retry_s=5.0)  # fmt: skip
        self.housekeeping = Housekeeping(
            self.kafka, self.writer, positions=self.positions, window=self.window, pending=self.pending,  # type: ignore[arg-type]
            flow=self.flow, telemetry=self.telemetry, clock=self.clock, wall=self.wall,
        )  # fmt: skip

    def consume(self, records: list[Record]) -> None:
        """What the loop does with a consume() batch (steps 4-5)."""
        accepted = self.positions.accept(ascending_runs(records))
        self.telemetry.consumed(accepted, self.window.extend(accepted))

    def tick(self, *, after_s: float = HOUSEKEEPING_INTERVAL_S) -> None:
        self.clock.now += after_s
        self.wall.now += after_s
        self.housekeeping.tick()

    def gauge(self, name: str, partition: int = 0) -> float | None:
        return self.telemetry.metrics.registry.get_sample_value(name, {"topic": "t", "partition": str(partition)})


def test_lag_seconds_is_the_age_of_the_oldest_unwritten_message_and_zero_once_written() -> None:
    rig = Rig()
    rig.positions.assign(("t", 0), 0)
    rig.kafka.cached[("t", 0)] = 3
    rig.consume([rec(0, at_ms=T0_MS - 5_000), rec(1, at_ms=T0_MS - 4_000), rec(2, at_ms=T0_MS - 1_000)])
    rig.tick(after_s=1.0)
    assert rig.gauge("microbatch_lag_seconds") == 6.0  # offset 0, produced 5 s before T0; now T0 + 1 s
    assert rig.gauge("microbatch_consumer_lag") == 3
    rig.positions.committed({("t", 0): 3})  # written; the window was handed over
    rig.window.take()
    rig.tick()
    assert rig.gauge("microbatch_lag_seconds") == 0.0
    assert rig.gauge("microbatch_consumer_lag") == 0


def test_a_partial_write_moves_the_age_to_the_next_consume_batch() -> None:
    rig = Rig()
    rig.positions.assign(("t", 0), 0)
    rig.kafka.cached[("t", 0)] = 20
    rig.consume([rec(n, at_ms=T0_MS - 60_000) for n in range(10)])
    rig.consume([rec(n, at_ms=T0_MS - 30_000) for n in range(10, 20)])
    rig.window.take()
    rig.writer.busy = True  # the first window is in flight
    rig.tick(after_s=0.0)
    assert rig.gauge("microbatch_lag_seconds") == 60.0
    rig.positions.committed({("t", 0): 10})
    rig.tick(after_s=2.0)
    assert rig.gauge("microbatch_lag_seconds") == 32.0


def test_each_partition_of_a_mixed_batch_has_its_own_age() -> None:
    rig = Rig()
    for partition in (0, 1):
        rig.positions.assign(("t", partition), 0)
        rig.kafka.cached[("t", partition)] = 2
    rig.consume([rec(0, 0, at_ms=T0_MS - 9_000), rec(1, 0), rec(0, 1, at_ms=T0_MS - 2_000), rec(1, 1)])
    rig.tick(after_s=0.0)
    assert (rig.gauge("microbatch_lag_seconds", 0), rig.gauge("microbatch_lag_seconds", 1)) == (9.0, 2.0)


def test_behind_with_nothing_fetched_counts_from_when_it_was_first_seen_behind() -> None:
    rig = Rig()
    rig.positions.assign(("t", 0), 5)
    rig.kafka.cached[("t", 0)] = 8
    rig.tick()
    assert rig.gauge("microbatch_lag_seconds") == 0.0
    rig.tick(after_s=7.0)
    assert rig.gauge("microbatch_lag_seconds") == 7.0  # a lower bound: the messages are at least that old
    rig.positions.committed({("t", 0): 8})
    rig.tick()
    assert rig.gauge("microbatch_lag_seconds") == 0.0


def test_both_lag_gauges_keep_moving_while_paused_by_a_database_outage() -> None:
    rig = Rig()
    rig.positions.assign(("t", 0), 0)
    rig.positions.assign(("t", 1), 0)
    rig.kafka.cached.update({("t", 0): 2, ("t", 1): 0})
    rig.kafka.leader.update({("t", 0): 2, ("t", 1): 0})
    rig.consume([rec(0, at_ms=T0_MS), rec(1, at_ms=T0_MS)])
    rig.pending.add(rig.window.take(), Trigger.RECORDS)  # the write failed: its records are pending again
    rig.flow.schedule_retry(Failure(Action.RETRY, "transient", "connection refused"))
    ages, lags = [], []
    for produced in (100, 200, 300):  # producers go on; fetching has stopped, so the cache does not move
        rig.kafka.leader.update({("t", 0): 2 + produced, ("t", 1): produced})
        rig.tick(after_s=10.0)
        ages.append((rig.gauge("microbatch_lag_seconds", 0), rig.gauge("microbatch_lag_seconds", 1)))
        lags.append((rig.gauge("microbatch_consumer_lag", 0), rig.gauge("microbatch_consumer_lag", 1)))
    assert lags == [(102, 100), (202, 200), (302, 300)]
    assert ages == [(10.0, 0.0), (20.0, 10.0), (30.0, 20.0)]
    assert set(rig.kafka.asked) == {False}, "paused: the leaders are asked, not librdkafka's frozen cache"
    rig.flow.recovered()
    rig.tick()
    assert rig.kafka.asked[-1] is True, "fetching again: the cache is fresh and costs no request"


def test_a_released_partition_is_no_longer_reported() -> None:
    rig = Rig()
    rig.positions.assign(("t", 0), 0)
    rig.kafka.cached[("t", 0)] = 1
    rig.consume([rec(0)])
    rig.tick()
    assert rig.gauge("microbatch_lag_seconds") is not None
    rig.positions.release([("t", 0)])
    rig.telemetry.released([("t", 0)])
    assert rig.gauge("microbatch_lag_seconds") is None and rig.gauge("microbatch_consumer_lag") is None


def test_unwritten_spans_are_bounded_and_only_err_towards_older() -> None:
    unwritten = Unwritten(wall=lambda: 0.0)
    for n in range(MAX_SPANS + 50):
        unwritten.accepted(ascending_runs([rec(2 * n, at_ms=n), rec(2 * n + 1, at_ms=n)]))
    assert unwritten.oldest(("t", 0), None) == 0
    assert unwritten.oldest(("t", 0), 2 * (MAX_SPANS - 1)) == MAX_SPANS - 1  # the widened last span
    assert unwritten.oldest(("t", 0), 10**9) is None
    unwritten.accepted(ascending_runs([Record("t", 0, 5, None, b"x")]))  # no timestamp: the time it was accepted
    assert unwritten.oldest(("t", 0), None) == 0


def test_a_partition_whose_watermark_is_unknown_keeps_its_figures() -> None:
    rig = Rig()
    rig.positions.assign(("t", 0), 5)
    rig.kafka.cached[("t", 0)] = 8
    rig.tick()
    rig.tick(after_s=6.0)
    assert rig.gauge("microbatch_lag_seconds") == 6.0
    del rig.kafka.cached[("t", 0)]  # the broker does not know (yet): -1001
    rig.tick()
    assert rig.gauge("microbatch_lag_seconds") == 6.0 and rig.gauge("microbatch_consumer_lag") == 3


def test_asking_the_leaders_is_bounded_per_tick_and_takes_turns() -> None:
    rig = Rig()
    for partition in (0, 1, 2):
        rig.positions.assign(("t", partition), 0)
        rig.kafka.leader[("t", partition)] = 10
    asked: list[int] = []
    original = rig.kafka.get_watermark_offsets

    def slow(tp: Any, timeout: float | None = None, cached: bool = False) -> tuple[int, int]:
        assert cached or (timeout is not None and timeout <= 0.5)
        asked.append(tp.partition)
        rig.clock.now += 0.6  # a slow leader: two requests exhaust the budget of one tick
        return original(tp, timeout, cached)

    rig.kafka.get_watermark_offsets = slow  # type: ignore[method-assign]
    rig.flow.pause_all()
    rig.tick()
    assert asked == [0, 1]
    rig.tick()
    assert asked == [0, 1, 2, 0]
