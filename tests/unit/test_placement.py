"""Placement: where a partition starts, for every case of consumer/placement.py's table."""

from __future__ import annotations

from consumer.incarnations import current_ids, moved
from consumer.placement import Facts, Rules, place
from consumer.positions import Positions
from pipeline.offsets import StoredPosition
from pipeline.records import Record

PID = ("orders", 2)
OLD, NEW = "AAAAAAAAAAAAAAAAAAAAAA", "BBBBBBBBBBBBBBBBBBBBBB"


def test_a_valid_stored_position_is_kept_without_an_event() -> None:
    placement = place(PID, Facts(StoredPosition(500, OLD), OLD, low=100, high=900), Rules())
    assert (placement.start, placement.change, placement.halt) == (500, None, None)


def test_a_row_without_a_topic_id_adopts_the_live_one() -> None:
    placement = place(PID, Facts(StoredPosition(500), NEW, low=0, high=900), Rules())
    assert placement.start == 500 and placement.event == "adopted_topic_id"
    assert placement.change is not None and placement.change.new == StoredPosition(500, NEW)


def test_a_re_created_topic_starts_over_at_the_reset_policy() -> None:
    earliest = place(PID, Facts(StoredPosition(13_000, OLD), NEW, low=0, high=50_000), Rules())
    assert earliest.start == 0 and earliest.event == "topic_recreated"
    assert earliest.change is not None and earliest.change.new == StoredPosition(0, NEW)
    latest = place(PID, Facts(StoredPosition(13_000, OLD), NEW, low=0, high=50_000), Rules(auto_offset_reset="latest"))
    assert latest.start == 50_000


def test_a_re_created_topic_halts_a_pipeline_deduplicated_by_coordinates() -> None:
    placement = place(
        PID, Facts(StoredPosition(13_000, OLD), NEW, low=0, high=50_000), Rules(coordinates_need_topic_id=True)
    )
    assert placement.start is None and placement.halt is not None and "topic_id" in placement.halt
    assert placement.event == "topic_recreated"
    assert placement.change is not None and placement.change.new == placement.change.old, "nothing moves"


def test_a_position_below_the_log_start_halts_naming_the_missing_range() -> None:
    placement = place(PID, Facts(StoredPosition(40, OLD), OLD, low=300, high=900), Rules())
    assert placement.start is None and placement.event == "gap_halted"
    assert placement.halt is not None and "orders[2] offsets 40..299" in placement.halt
    assert "positions reset" in placement.halt


def test_a_position_beyond_a_truncated_end_halts_too() -> None:
    placement = place(PID, Facts(StoredPosition(1_000, OLD), OLD, low=0, high=700), Rules())
    assert placement.halt is not None and "700..999" in placement.halt and "truncated" in placement.halt


def test_with_skip_a_gap_resumes_at_the_first_available_offset_and_says_what_was_skipped() -> None:
    below = place(PID, Facts(StoredPosition(40, OLD), OLD, low=300, high=900), Rules(on_position_gap="skip"))
    assert below.start == 300 and below.event == "gap_skipped" and below.halt is None
    assert below.change is not None and "offsets 40..299" in below.change.detail
    above = place(PID, Facts(StoredPosition(1_000, OLD), OLD, low=0, high=700), Rules(on_position_gap="skip"))
    assert above.start == 700


def test_no_stored_row_starts_at_the_reset_policy_unless_kafka_commits_are_adopted() -> None:
    facts = Facts(None, NEW, low=10, high=90, kafka_committed=50)
    plain = place(PID, facts, Rules())
    assert plain.start == 10 and plain.event == "reset"
    assert plain.change is not None and plain.change.old is None and plain.change.new == StoredPosition(10, NEW)
    adopted = place(PID, facts, Rules(adopt_kafka_offsets=True))
    assert adopted.start == 50 and adopted.event == "adopted_kafka_offset"
    stale = place(PID, Facts(None, NEW, low=60, high=90, kafka_committed=50), Rules(adopt_kafka_offsets=True))
    assert stale.start == 60 and stale.event == "reset", "a Kafka commit outside the log is not adopted"


def test_without_the_log_bounds_nothing_is_decided_that_needs_them() -> None:
    assert place(PID, Facts(None, None, low=None, high=None), Rules()).start is None
    kept = place(PID, Facts(StoredPosition(5), None, low=None, high=None), Rules())
    assert kept.start == 5 and kept.halt is None, "a row of an older microbatch, while the broker is mute"


def test_a_gap_in_a_row_without_a_topic_id_compares_against_the_row_as_stored() -> None:
    placement = place(PID, Facts(StoredPosition(0), NEW, low=100, high=900), Rules(on_position_gap="skip"))
    assert placement.change is not None
    assert placement.change.old == StoredPosition(0), "the reset must find the row as it is, without a topic ID"
    assert placement.change.new == StoredPosition(100, NEW)


def test_every_placement_that_starts_says_which_incarnation_it_reads() -> None:
    kept = place(PID, Facts(StoredPosition(500, OLD), OLD, low=0, high=900), Rules())
    assert (kept.start, kept.change, kept.topic_id) == (500, None, OLD)
    reset = place(PID, Facts(StoredPosition(13_000, OLD), NEW, low=0, high=50), Rules())
    assert reset.topic_id == NEW


def test_a_stored_incarnation_is_not_trusted_blind() -> None:
    """A stored row with a topic ID while the broker cannot describe the topic: place it later."""
    waiting = place(PID, Facts(StoredPosition(500, OLD), None, low=0, high=900), Rules())
    assert waiting.start is None and waiting.halt is None and waiting.change is None
    needed = place(PID, Facts(None, None, low=0, high=900), Rules(needs_topic_id=True))
    assert needed.start is None, "a pipeline that stores the topic ID never reads without it"


def test_no_row_is_made_without_the_topic_id() -> None:
    """A new row without an incarnation would never be checked again: a topic re-created later would be
    read on from the old offset. Whatever the rules, a partition with no row waits for the topic's ID."""
    for rules in (Rules(), Rules(auto_offset_reset="latest"), Rules(adopt_kafka_offsets=True)):
        fresh = place(PID, Facts(None, None, low=0, high=900, kafka_committed=40), rules)
        assert (fresh.start, fresh.change, fresh.halt) == (None, None, None), rules
        vanished = place(PID, Facts(None, None, low=0, high=900, assigned_at=300), rules)
        assert (vanished.start, vanished.change, vanished.halt) == (None, None, None), rules
    told = place(PID, Facts(None, NEW, low=0, high=900), Rules())
    assert told.start == 0 and told.topic_id == NEW
    assert told.change is not None and told.change.new == StoredPosition(0, NEW)


def test_a_row_that_vanished_during_the_ownership_is_read_again_from_where_it_started() -> None:
    facts = Facts(None, NEW, low=0, high=9_000, kafka_committed=4_000, assigned_at=1_000)
    placement = place(PID, facts, Rules(auto_offset_reset="latest", adopt_kafka_offsets=True))
    assert placement.start == 1_000 and placement.event == "reset"
    assert placement.change is not None and "vanished" in placement.change.detail


def test_a_row_that_vanished_is_read_again_from_the_log_start_with_earliest() -> None:
    # What the database lost may predate this ownership: rows other members (or an earlier process)
    # wrote since the row was created. With earliest, the log start; the rows still there are duplicates.
    facts = Facts(None, NEW, low=200, high=9_000, kafka_committed=4_000, assigned_at=1_000)
    placement = place(PID, facts, Rules(auto_offset_reset="earliest", adopt_kafka_offsets=True))
    assert placement.start == 200 and placement.event == "reset"
    assert placement.change is not None and "(1000)" in placement.change.detail
    unknown = place(PID, Facts(None, NEW, low=None, high=None, assigned_at=1_000), Rules(auto_offset_reset="earliest"))
    assert unknown.start is None and unknown.change is None, "not where the ownership started: placed later"


def test_a_partition_read_from_an_old_incarnation_is_found_and_no_other() -> None:
    a, b, c, d = ("t", 0), ("t", 1), ("u", 0), ("v", 0)
    asked = {a: "X", b: "Y", c: "X", d: "Z"}
    now = {a: "X", b: "Y", c: "Y2", d: "Z"}  # c was placed again in between: its answer is out of date
    current = {"t": "Y", "u": "U", "v": None}  # v is deleted and not re-created yet
    assert moved(asked, now, current) == {a: ("X", "Y")}  # b reads the current one already
    assert moved(asked, {b: "Y"}, current) == {}  # a partition released meanwhile is not placed again
    assert moved({}, now, current) == {}


def test_only_known_positions_have_an_incarnation_to_check() -> None:
    positions = Positions()
    positions.assign(("t", 0), 10, topic_id="X")
    positions.assign(("t", 1), None, known=False)
    positions.assign(("t", 2), 5)  # a row of a release that stored no topic ID
    assert positions.incarnations() == {("t", 0): "X"}
    positions.forget([("t", 0)])
    assert positions.incarnations() == {}
    positions.sought(("t", 1), 3, 3, topic_id="Y")
    assert positions.incarnations() == {("t", 1): "Y"}


def test_an_id_a_topic_was_re_created_from_is_never_gone_back_to() -> None:
    left_behind = {"t": {"X"}}
    current = current_ids({"t": "X", "u": "X"}, left_behind)  # a broker answering from stale metadata
    assert current == {"t": None, "u": "X"}
    assert moved({("t", 0): "Y"}, {("t", 0): "Y"}, current) == {}
    assert moved({("t", 0): "Y"}, {("t", 0): "Y"}, current_ids({"t": "Z"}, left_behind)) == {("t", 0): ("Y", "Z")}


def test_two_partitions_of_one_topic_keep_their_own_incarnations() -> None:
    # One partition placed again on the re-created topic, the other still read from the old one.
    positions = Positions()
    positions.assign(("t", 0), 10, topic_id="OLD")
    positions.assign(("t", 1), 0, topic_id="NEW")
    positions.assign(("u", 0), 3)  # no topic ID known: none claimed
    assert positions.topic_ids() == {("t", 0): "OLD", ("t", 1): "NEW"}
    records = [Record("t", 0, 10, None, b"{}"), Record("t", 1, 0, None, b"{}"), Record("u", 0, 3, None, b"{}")]
    batch = positions.batch(records)
    assert batch.topic_ids == {("t", 0): "OLD", ("t", 1): "NEW", ("u", 0): None}
