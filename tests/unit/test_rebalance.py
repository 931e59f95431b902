"""What `on_assign` hands librdkafka: only absolute offsets, whether the partitions could be placed or not.

A logical offset (END, BEGINNING, STORED) makes librdkafka look the offset up; a lookup answered after
our seek to the stored position is retried from the logical offset, and the fetch position jumps to the
end of the log, past records never delivered (consumer/rebalance.py). The consumer (a recording stand-in
for confluent_kafka.Consumer: what is asserted is our own decision, not librdkafka's behaviour), the
seeker's placement and the handover are stand-ins; Positions, Window and Telemetry are the real ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from confluent_kafka import TopicPartition

from consumer.placement import Placement
from consumer.positions import Positions
from consumer.rebalance import Rebalance
from consumer.seeking import UNPLACED_OFFSET
from consumer.telemetry import Telemetry
from consumer.window import Window, WindowPolicy
from pipeline.errors import DatabaseFailure, FailureClass
from pipeline.records import PartitionId

TOPIC = "events"


class RecordingConsumer:
    def __init__(self) -> None:
        self.assigned: list[TopicPartition] = []
        self.paused: list[TopicPartition] = []
        self.resumed: list[TopicPartition] = []

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned += partitions

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused += partitions

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.resumed += partitions


class Seeker:
    """Places what `starts` names (None: the facts were not known), or fails like the database."""

    def __init__(self, starts: dict[int, int | None] | None, error: Exception | None = None) -> None:
        self.starts, self.error = starts, error

    def place(self, pids: Sequence[PartitionId]) -> dict[PartitionId, Placement]:
        if self.error is not None:
            raise self.error
        assert self.starts is not None
        return {pid: Placement(self.starts[pid[1]]) for pid in pids}

    def apply(self, pid: PartitionId, placement: Placement) -> None:  # halted partitions only
        raise AssertionError("no placement here halts")


class Handover:
    closing = False

    def settle(self) -> bool:
        return True


class Flow:
    paused = waiting = False


def _assign(seeker: Seeker, partitions: int = 3) -> tuple[RecordingConsumer, Positions]:
    positions, consumer = Positions(), RecordingConsumer()
    window = Window(WindowPolicy(), clock=lambda: 0.0)
    rebalance = Rebalance(cast(Any, Handover()), positions=positions, seeker=cast(Any, seeker), window=window,
                          flow=cast(Any, Flow()), telemetry=Telemetry())  # fmt: skip
    rebalance.on_assign(cast(Any, consumer), [TopicPartition(TOPIC, p) for p in range(partitions)])
    return consumer, positions


def _offsets(partitions: list[TopicPartition]) -> dict[int, int]:
    return {tp.partition: tp.offset for tp in partitions}


def test_placed_partitions_start_at_their_place_and_the_others_at_an_absolute_placeholder() -> None:
    consumer, positions = _assign(Seeker({0: 120, 1: None, 2: 7}))
    assert _offsets(consumer.assigned) == {0: 120, 1: UNPLACED_OFFSET, 2: 7}
    assert UNPLACED_OFFSET >= 0  # absolute: no offset lookup
    assert [tp.partition for tp in consumer.paused] == [1] and [tp.partition for tp in consumer.resumed] == [0, 2]
    assert positions.unknown() == [(TOPIC, 1)] and positions.known() == [(TOPIC, 0), (TOPIC, 2)]


def test_an_unreachable_database_assigns_every_partition_paused_at_the_placeholder() -> None:
    consumer, positions = _assign(Seeker(None, DatabaseFailure(FailureClass.TRANSIENT, "08006", "down")))
    assert _offsets(consumer.assigned) == dict.fromkeys(range(3), UNPLACED_OFFSET)
    assert sorted(tp.partition for tp in consumer.paused) == [0, 1, 2] and consumer.resumed == []
    assert positions.unknown() == [(TOPIC, p) for p in range(3)]


def test_a_failing_callback_still_assigns_absolute_offsets_and_leaves_every_partition_unplaced() -> None:
    # Left unassigned, the binding would assign them at Kafka's committed offsets: a lookup.
    consumer, positions = _assign(Seeker(None, RuntimeError("a bug in placement")))
    assert _offsets(consumer.assigned) == dict.fromkeys(range(3), UNPLACED_OFFSET)
    assert sorted(tp.partition for tp in consumer.paused) == [0, 1, 2]
    assert positions.unknown() == [(TOPIC, p) for p in range(3)]
