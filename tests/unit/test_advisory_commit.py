"""The advisory Kafka commit (consumer/handover.py): the latest stored position of each partition, at most
once per ADVISORY_INTERVAL_S, and everything stored before a partition is released.

A bisection commits thousands of small transactions per window; one OffsetCommit each flooded the group
coordinator, and the group's heartbeats waited behind them until the session expired. The consumer (a
recording stand-in for confluent_kafka.Consumer) and the writer thread (a queue of COMMITs' positions) are
stand-ins; Positions, Pending, Window and Telemetry are the real ones.
"""

from __future__ import annotations

from typing import Any, cast

from confluent_kafka import TopicPartition

from consumer.handover import ADVISORY_INTERVAL_S, Handover
from consumer.pending import Pending
from consumer.positions import Positions
from consumer.telemetry import Telemetry
from consumer.window import Window, WindowPolicy
from pipeline.records import PartitionId


class RecordingConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[tuple[str, int], int]] = []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous, "the advisory commit never blocks the loop"
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})


class Writer:
    """The COMMITs' positions the writer thread reported, drained by `commits()`."""

    def __init__(self) -> None:
        self.reported: list[dict[PartitionId, int]] = []

    def commits(self) -> list[dict[PartitionId, int]]:
        found, self.reported = self.reported, []
        return found


class Flow:
    waiting = False
    halt = None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _rig() -> tuple[Handover, RecordingConsumer, Writer, Clock, Positions]:
    kafka, writer, clock, positions = RecordingConsumer(), Writer(), Clock(), Positions()
    for partition in range(3):
        positions.assign(("t", partition), 0, known=True)
    handover = Handover(
        cast(Any, kafka), cast(Any, None), cast(Any, writer), pending=Pending(), positions=positions,
        seeker=cast(Any, None), flow=cast(Any, Flow()), telemetry=Telemetry(), raw_table="transactions", clock=clock,
    )  # fmt: skip
    return handover, kafka, writer, clock, positions


def test_a_bisection_s_many_commits_reach_kafka_as_one_commit_per_interval_with_the_latest_positions() -> None:
    handover, kafka, writer, clock, positions = _rig()
    writer.reported = [{("t", 0): 10}]
    handover.apply_commits()
    assert kafka.commits == [{("t", 0): 10}]  # the first is told at once
    for offset in range(11, 3011):  # one window bisected: thousands of transactions, each storing positions
        writer.reported = [{("t", 0): offset}, {("t", 1): offset * 2}]
        clock.now += ADVISORY_INTERVAL_S / 1000
        handover.apply_commits()
    assert positions.stored(("t", 0)) == 3010 and positions.stored(("t", 1)) == 6020  # every COMMIT applied
    assert 3 <= len(kafka.commits) <= 5  # about 3 s of loop steps: about three commits, not 6,000
    clock.now += ADVISORY_INTERVAL_S
    handover.apply_commits()  # nothing new stored: the last positions are told once the interval has passed
    assert kafka.commits[-1] == {("t", 0): 3010, ("t", 1): 6020}
    told = len(kafka.commits)
    clock.now += 10 * ADVISORY_INTERVAL_S
    handover.apply_commits()
    assert len(kafka.commits) == told, "nothing stored since: nothing to tell"


def test_what_was_stored_is_told_before_a_partition_is_released() -> None:
    handover, kafka, writer, clock, _ = _rig()
    writer.reported = [{("t", 2): 5}]
    handover.apply_commits()
    writer.reported = [{("t", 2): 9}]
    clock.now += ADVISORY_INTERVAL_S / 10
    handover.apply_commits()
    assert kafka.commits == [{("t", 2): 5}]  # within the interval: kept
    handover.release(Window(WindowPolicy(), clock=clock), {("t", 2)})
    assert kafka.commits == [{("t", 2): 5}, {("t", 2): 9}]  # revoked: told before it goes


def test_a_commit_that_ends_after_its_partition_was_released_is_not_told() -> None:
    handover, kafka, writer, clock, _ = _rig()
    handover.release(Window(WindowPolicy(), clock=clock), {("t", 1)})
    assert kafka.commits == [], "nothing was stored: nothing to tell"
    writer.reported = [{("t", 0): 4, ("t", 1): 50}]  # a write still running when t1 was released
    handover.apply_commits()
    assert kafka.commits == [{("t", 0): 4}]  # t1 may belong to another member by now
