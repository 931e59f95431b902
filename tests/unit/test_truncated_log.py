"""A log truncated below the stored position: what placement does once the broker refused the position's
leader epoch (consumer/placement.py), and how that refusal is read from the Kafka client's words."""

from __future__ import annotations

from dataclasses import dataclass

from consumer.placement import Facts, Rules, diverged_at, place
from consumer.seeking import seek_target
from pipeline.offsets import StoredPosition
from pipeline.records import Batch, Record, leader_epoch_of

PID = ("orders", 2)
TOPIC_ID = "AAAAAAAAAAAAAAAAAAAAAA"
# What librdkafka (2.x, bundled with the locked confluent-kafka) says, as the consumer reads it from
# KafkaError.str() of the _AUTO_OFFSET_RESET error (auto.offset.reset = error).
TRUNCATED = (
    "Partition log truncation detected at offset 20 (leader epoch 0): broker end offset is 10 "
    "(offset leader epoch 0). Reset to INVALID.: Local: Partition log truncation detected (broker 1)"
)
NO_EPOCH = (
    "No epoch found less or equal to offset 20 (leader epoch 3): broker end offset is -1 (offset leader epoch -1). "
    "Reset using configured policy.: Local: Partition log truncation detected (broker 1)"
)
OUT_OF_RANGE = "Fetch position offset 20 is out of range for partition: Broker: Offset out of range (broker 1)"


def test_the_divergence_point_is_read_from_the_clients_refusal() -> None:
    assert diverged_at(TRUNCATED) == 10
    assert diverged_at(NO_EPOCH) == -1
    assert diverged_at("Partition log truncation detected") == -1, "the point not said: -1, never a guess"
    assert diverged_at(OUT_OF_RANGE) is None, "an offset out of range is a gap, not a truncation"


def test_a_stored_epoch_is_sought_with_until_it_was_refused() -> None:
    stored = StoredPosition(20, TOPIC_ID, leader_epoch=0)
    placement = place(PID, Facts(stored, TOPIC_ID, low=0, high=40), Rules())
    assert (placement.start, placement.leader_epoch, placement.change) == (20, 0, None)
    target = seek_target(PID, 20, 0)
    assert (target.topic, target.partition, target.offset, target.leader_epoch) == ("orders", 2, 20, 0)
    assert seek_target(PID, 20, None).leader_epoch is None


def test_a_truncated_log_is_read_again_from_where_it_diverged() -> None:
    stored = StoredPosition(20, TOPIC_ID, leader_epoch=0)
    placement = place(PID, Facts(stored, TOPIC_ID, low=0, high=40, refused=True, diverged_at=10), Rules())
    assert placement.start == 10 and placement.leader_epoch is None and placement.halt is None
    assert placement.event == "log_truncated"
    assert placement.change is not None and placement.change.old == stored
    assert placement.change.new == StoredPosition(10, TOPIC_ID)
    assert "offsets 10..19" in placement.change.detail


def test_a_truncated_log_halts_a_pipeline_deduplicated_by_offset() -> None:
    stored = StoredPosition(20, TOPIC_ID, leader_epoch=0)
    rules = Rules(dedupes_by_offset=True, on_position_gap="skip")
    placement = place(PID, Facts(stored, TOPIC_ID, low=0, high=40, refused=True, diverged_at=10), rules)
    assert placement.start is None and placement.halt is not None and placement.event == "truncation_halted"
    assert "offsets 10..19" in placement.halt and "duplicates" in placement.halt
    assert placement.halt.endswith("--partition 2 --to 10`")
    assert placement.change is not None and placement.change.new == placement.change.old, "nothing moves"
    # Retention deleted some of them too: the reset it advises starts at the log start (reset refuses below it).
    below = place(PID, Facts(stored, TOPIC_ID, low=14, high=40, refused=True, diverged_at=10), rules)
    assert below.halt is not None and "--partition 2 --to 14`; offsets 10..13 were deleted" in below.halt


def test_a_truncation_below_the_log_start_is_a_gap_too() -> None:
    stored = StoredPosition(20, TOPIC_ID, leader_epoch=0)
    facts = Facts(stored, TOPIC_ID, low=14, high=40, refused=True, diverged_at=10)
    halted = place(PID, facts, Rules())
    assert halted.start is None and halted.event == "gap_halted"
    assert halted.halt is not None and "offsets 10..13 were deleted before they were read" in halted.halt
    skipped = place(PID, facts, Rules(on_position_gap="skip"))
    assert skipped.start == 14 and skipped.event == "log_truncated"
    assert skipped.change is not None and "offsets 10..13 were deleted" in skipped.change.detail


def test_an_epoch_the_broker_no_longer_knows_is_fine_at_the_log_start() -> None:
    # The next epoch starts at the stored position, and retention deleted everything before it.
    at_start = place(
        PID, Facts(StoredPosition(12, TOPIC_ID, 3), TOPIC_ID, low=12, high=40, refused=True, diverged_at=-1), Rules()
    )
    assert (at_start.start, at_start.change, at_start.leader_epoch) == (12, None, None), "refused once: not asked again"


def test_a_position_before_the_divergence_is_kept_without_its_epoch() -> None:
    # The client refused its own fetch position, ahead of the stored one (records not written yet).
    stored = StoredPosition(8, TOPIC_ID, leader_epoch=0)
    placement = place(PID, Facts(stored, TOPIC_ID, low=0, high=40, refused=True, diverged_at=10), Rules())
    assert (placement.start, placement.change, placement.leader_epoch) == (8, None, None)


@dataclass
class _Message:
    """The two accessors of a consumed message that a record reaches (bound methods, as the client's)."""

    epoch: int

    def leader_epoch(self) -> int:
        return self.epoch

    def headers(self) -> list[tuple[str, bytes]]:
        return []


def test_a_batch_stores_the_leader_epoch_of_each_partitions_last_record() -> None:
    def consumed(partition: int, offset: int, epoch: int) -> Record:
        return Record("orders", partition, offset, None, b"{}", _Message(epoch).headers)

    records = [consumed(0, 5, 1), consumed(0, 6, 3), consumed(1, 9, 2)]
    batch = Batch(records, {("orders", 0): 5, ("orders", 1): None})
    assert batch.leader_epochs() == {("orders", 0): 3, ("orders", 1): 2}
    assert leader_epoch_of(Record("orders", 0, 1, None, b"{}")) is None, "a record not consumed has none"
    assert leader_epoch_of(consumed(0, 1, -1)) is None


def test_a_refused_position_is_not_sought_with_its_epoch_again() -> None:
    stored = StoredPosition(20, TOPIC_ID, leader_epoch=0)
    placement = place(PID, Facts(stored, TOPIC_ID, low=0, high=40, refused=True), Rules())
    assert (placement.start, placement.leader_epoch) == (20, None)


def test_a_position_beyond_the_end_is_sought_with_its_epoch_before_it_is_called_a_gap() -> None:
    # Truncated and not yet written again past it: the broker says where the epoch's log ends.
    stored = StoredPosition(600, TOPIC_ID, leader_epoch=0)
    placement = place(PID, Facts(stored, TOPIC_ID, low=0, high=400), Rules())
    assert (placement.start, placement.leader_epoch, placement.halt) == (600, 0, None)
    refused = place(PID, Facts(stored, TOPIC_ID, low=0, high=400, refused=True, diverged_at=300), Rules())
    assert refused.start == 300 and refused.event == "log_truncated"
    out_of_range = place(PID, Facts(stored, TOPIC_ID, low=0, high=400, refused=True), Rules())
    assert out_of_range.start is None and out_of_range.event == "gap_halted", "refused without a truncation"
    no_epoch = place(PID, Facts(StoredPosition(600, TOPIC_ID), TOPIC_ID, low=0, high=400), Rules())
    assert no_epoch.event == "gap_halted"


def test_an_unknown_divergence_above_the_log_start_halts_rather_than_guess() -> None:
    stored = StoredPosition(20, TOPIC_ID, leader_epoch=3)
    placement = place(PID, Facts(stored, TOPIC_ID, low=12, high=40, refused=True, diverged_at=-1), Rules())
    assert placement.start is None and placement.event == "truncation_halted"
    assert placement.halt is not None and "without saying where its log diverged" in placement.halt
