"""Where a partition starts reading when this consumer takes it: the stored position when it is
valid, or a decision that is logged, counted and audited. Pure.

- a stored position of this topic incarnation, within the log: start there;
- a stored row without a topic ID (written by an older microbatch): start there, and record the
  live topic ID (audit `adopted_topic_id`);
- a stored row of another topic ID (the topic was deleted and re-created): the old position does not
  apply: start at `auto_offset_reset` (audit `topic_recreated`), or halt (below);
- a stored position whose leader epoch the broker refused (`diverged_at`: the log was truncated
  below it, then written again, by an unclean leader election or a broker on one replica that lost
  its unflushed tail; the topic ID and the log's bounds do not show it): the offsets from where the
  log diverged up to the stored position now hold other messages, never written. Start where it
  diverged (audit `log_truncated`), or halt when the dedupe key holds the Kafka offset (audit
  `truncation_halted`: those messages would be taken for duplicates of the lost ones);
- a stored position below the log start or above its end (retention, a truncated log, a database
  restored from an old backup) is a gap: halt (audit `gap_halted`), or with on_position_gap = skip
  start at the first available offset (audit `gap_skipped`, with the range);
- a row that vanished while this consumer owned the partition (a restore, a failover that lost
  commits): the database may have lost more than this ownership wrote (other members', an earlier
  process's), so start at the log start with auto_offset_reset = earliest (the rows it still holds
  are skipped as duplicates), else where this ownership started rather than at the end (audit `reset`);
- no stored row: start at the group's Kafka-committed offset when adopt_kafka_offsets is on and
  there is one (audit `adopted_kafka_offset`), else at `auto_offset_reset` (audit `reset`).

Only a stored row without a topic ID is read while the broker cannot say the topic's ID: a row with
one, or a row to be made, waits for it (placed again later), so that every position this consumer
stores has an incarnation to check.

A pipeline deduplicated by Kafka coordinates would take the new incarnation's offsets for
duplicates of the old one's rows (ON CONFLICT DO NOTHING drops them), so for it a re-created topic
halts, unless its dedupe key includes `{ kafka = "topic_id" }`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from pipeline.offsets import PositionChange, StoredPosition
from pipeline.records import PartitionId

# librdkafka's words when a position's leader epoch shows a truncated log (its KIP-320 check): the
# description of ERR__LOG_TRUNCATION, and the end offset the broker gave for that epoch (-1: none left).
_TRUNCATION = "partition log truncation detected"
_END_OFFSET = re.compile(r"broker end offset is (-?\d+)")


def diverged_at(refusal: str) -> int | None:
    """Where the log diverged, from the Kafka client's refusal of a fetch position (-1: not said, or
    the broker knows no record of the epoch or an earlier one); None when the refusal is not about a
    truncated log."""
    if _TRUNCATION not in refusal.lower():
        return None
    found = _END_OFFSET.search(refusal)
    return int(found.group(1)) if found else -1


@dataclass(frozen=True)
class Rules:
    """The settings placement follows."""

    auto_offset_reset: str = "earliest"  # earliest | latest
    on_position_gap: str = "halt"  # halt | skip
    adopt_kafka_offsets: bool = False
    coordinates_need_topic_id: bool = False  # the dedupe key is Kafka coordinates without the topic ID
    needs_topic_id: bool = False  # a raw column holds the topic ID: never read a partition without it
    dedupes_by_offset: bool = False  # the dedupe key holds the Kafka offset (with or without the topic ID)


@dataclass(frozen=True)
class Facts:
    """What the consumer found out about one partition (None: could not be found out)."""

    stored: StoredPosition | None
    topic_id: str | None
    low: int | None  # the log start offset
    high: int | None  # the high watermark
    kafka_committed: int | None = None
    assigned_at: int | None = None  # where this consumer's ownership started (its row vanished since)
    # The broker refused this partition's fetch position since it was last placed (`refused`), and,
    # when the refusal said the log was truncated, where the log of the epoch ends now (`diverged_at`;
    # -1: not said, or no record of that epoch or an earlier one left).
    refused: bool = False
    diverged_at: int | None = None


@dataclass(frozen=True)
class Placement:
    """Where to start (`start`), or why not (`halt`); `change`: the stored position to write first."""

    start: int | None
    change: PositionChange | None = None
    halt: str | None = None
    topic_id: str | None = None  # the incarnation the partition is read from (None: not known)
    leader_epoch: int | None = None  # seek with it: the broker checks that the log was not truncated below `start`

    @property
    def event(self) -> str | None:
        return None if self.change is None else self.change.kind


def _fresh_start(rules: Rules, facts: Facts) -> int | None:
    return facts.low if rules.auto_offset_reset == "earliest" else facts.high


def place(pid: PartitionId, facts: Facts, rules: Rules) -> Placement:
    """The decision for `pid` (the cases of the module docstring), with the incarnation it is read from."""
    placement = _decide(pid, facts, rules)
    stored_id = facts.stored.topic_id if facts.stored is not None else None
    return replace(placement, topic_id=facts.topic_id or stored_id) if placement.start is not None else placement


def _decide(pid: PartitionId, facts: Facts, rules: Rules) -> Placement:  # noqa: PLR0911, PLR0912 - one return per case
    topic, partition = pid
    stored, live = facts.stored, facts.topic_id
    if live is None and (rules.needs_topic_id or stored is None or stored.topic_id is not None):
        # The topic's incarnation cannot be checked now: placed again later. A new row is never made
        # without it either: a position of no known incarnation is never checked again (the watch of
        # consumer/incarnations.py skips it), so a re-created topic would be read on from the old offset.
        return Placement(None)
    if stored is None and facts.assigned_at is not None and _in_range(facts.assigned_at, facts):
        # The row vanished while this consumer owned the partition (a restore, a failover that lost
        # commits): never the Kafka commit, nor the end; the log start when the reset policy says so.
        fresh = _fresh_start(rules, facts)
        if fresh is None and rules.auto_offset_reset == "earliest":
            return Placement(None)  # the log start is unknown now: the partition is placed later
        again = facts.assigned_at if fresh is None else min(facts.assigned_at, fresh)
        detail = (
            f"the stored row vanished: reading again from {again}, where this consumer's ownership started"
            if again == facts.assigned_at
            else f"the stored row vanished: reading again from {again} (auto_offset_reset = earliest), before "
            f"where this consumer's ownership started ({facts.assigned_at})"
        )
        return Placement(again, PositionChange(pid, None, StoredPosition(again, live), "reset", detail))
    if stored is None:
        committed = facts.kafka_committed
        if rules.adopt_kafka_offsets and committed is not None and _in_range(committed, facts):
            new = StoredPosition(committed, live)
            return Placement(
                committed, PositionChange(pid, None, new, "adopted_kafka_offset", "the group's Kafka commit")
            )
        start = _fresh_start(rules, facts)
        if start is None:
            return Placement(None)  # the offsets are unknown now: the partition is placed later
        detail = f"no stored position: auto_offset_reset = {rules.auto_offset_reset}"
        return Placement(start, PositionChange(pid, None, StoredPosition(start, live), "reset", detail))
    if stored.topic_id is not None and live is not None and stored.topic_id != live:
        if rules.coordinates_need_topic_id:
            return Placement(
                None,
                PositionChange(
                    pid,
                    stored,
                    stored,
                    "topic_recreated",
                    f"halted: topic ID {stored.topic_id} → {live}, "
                    "and the dedupe key is Kafka coordinates without the topic ID",
                ),
                halt=f"topic {topic} was deleted and re-created (topic ID {stored.topic_id} → {live}): the pipeline "
                'deduplicates by Kafka coordinates, which the new topic reuses; add { kafka = "topic_id" } to '
                f"its dedupe key, or move the stored positions with `microbatch positions reset --topic {topic}`",
            )
        start = _fresh_start(rules, facts)
        if start is None:
            return Placement(None)
        detail = f"topic ID {stored.topic_id} → {live}: the old position {stored.offset} does not apply"
        return Placement(start, PositionChange(pid, stored, StoredPosition(start, live), "topic_recreated", detail))
    original, adopted = stored, None
    if stored.topic_id is None and live is not None:
        recorded = StoredPosition(stored.offset, live, stored.leader_epoch)
        adopted = PositionChange(pid, stored, recorded, "adopted_topic_id")
    if facts.diverged_at is not None:
        diverged = _diverged(pid, stored, facts, rules)
        if diverged is not None:
            return diverged
    epoch = None if facts.refused else stored.leader_epoch  # refused once: not asked again
    gap = _gap(stored.offset, facts)
    if gap is None:
        return Placement(stored.offset, adopted, leader_epoch=epoch)
    if epoch is not None and facts.high is not None and stored.offset > facts.high:
        # Beyond the end: a log truncated and not yet written again past the position. The broker says
        # where the log of the epoch ends, and new messages from there are read rather than skipped.
        return Placement(stored.offset, adopted, leader_epoch=epoch)
    first, end, resume = gap
    missing = f"{topic}[{partition}] offsets {first}..{end - 1}"
    if rules.on_position_gap == "skip":
        detail = f"skipped {missing} (on_position_gap = skip)"
        return Placement(resume, PositionChange(pid, original, StoredPosition(resume, live), "gap_skipped", detail))
    why = (
        "were deleted before they were written"
        if stored.offset < (facts.low or 0)
        else "are beyond the end of the log (truncated)"
    )
    halt = (
        f"position gap: {missing} {why} (stored position {stored.offset}); "
        f"reset with `microbatch positions reset --topic {topic} --partition {partition} --to earliest`, "
        "or set on_position_gap = skip"
    )
    return Placement(None, PositionChange(pid, original, original, "gap_halted", f"{missing} {why}"), halt=halt)


def _diverged(pid: PartitionId, stored: StoredPosition, facts: Facts, rules: Rules) -> Placement | None:
    """The decision for a stored position whose leader epoch the broker refused; None when the log
    diverged at or after it (nothing written was replaced: start there, without the epoch)."""
    topic, partition = pid
    low, point = facts.low or 0, facts.diverged_at if facts.diverged_at is not None else -1
    if point < 0:
        # No record of the epoch left: fine for a position at the log start (the next epoch starts
        # there and retention deleted the rest); above it, a broker that lost its epoch history or a
        # refusal in other words than librdkafka's: where the log diverged is not known. Never guessed.
        if stored.offset <= low:
            return None
        detail = (
            f"the broker refused the stored position {stored.offset} as truncated without saying where its log "
            f"diverged (no record of its leader epoch or an earlier one, above the log start {low})"
        )
        halt = (
            f"{topic}[{partition}]: {detail}; check the broker's log, then move the position with "
            f"`microbatch positions reset --topic {topic} --partition {partition} --to earliest` (everything "
            "Kafka holds is read again: safe when the dedupe key is not the Kafka offset) or `--to <offset>`"
        )
        return Placement(None, PositionChange(pid, stored, stored, "truncation_halted", detail), halt=halt)
    if stored.offset <= point:
        return None
    replaced = f"{topic}[{partition}] offsets {point}..{stored.offset - 1}"
    epoch = "" if stored.leader_epoch is None else f" (leader epoch {stored.leader_epoch})"
    detail = (
        f"the log was truncated below the stored position {stored.offset}{epoch} and written again: {replaced} "
        "hold other messages than those written"
    )
    if rules.dedupes_by_offset:
        halt = (
            f"log truncated: {detail}; the pipeline deduplicates by Kafka offset, so their rows would be dropped "
            f"as duplicates of the lost messages' rows: move the rows of {replaced} out of the raw table, then "
            # (not below the log start: retention may have deleted some of them since, and reset refuses it)
            f"`microbatch positions reset --topic {topic} --partition {partition} --to {max(point, low)}`"
            + (f"; offsets {point}..{low - 1} were deleted before they were read: lost" if point < low else "")
        )
        return Placement(None, PositionChange(pid, stored, stored, "truncation_halted", detail), halt=halt)
    if point < low:  # and retention deleted some of those before they were read
        missing = f"{topic}[{partition}] offsets {point}..{low - 1} were deleted before they were read"
        if rules.on_position_gap != "skip":
            halt = (
                f"position gap: {detail}, and {missing}; reset with `microbatch positions reset --topic {topic} "
                f"--partition {partition} --to earliest`, or set on_position_gap = skip"
            )
            return Placement(None, PositionChange(pid, stored, stored, "gap_halted", f"{detail}; {missing}"), halt=halt)
        detail += f"; {missing} (on_position_gap = skip)"
    start = max(point, low)
    new = StoredPosition(start, facts.topic_id or stored.topic_id)
    return Placement(start, PositionChange(pid, stored, new, "log_truncated", f"{detail}; reading them from {start}"))


def _in_range(offset: int, facts: Facts) -> bool:
    return (facts.low is None or offset >= facts.low) and (facts.high is None or offset <= facts.high)


def _gap(position: int, facts: Facts) -> tuple[int, int, int] | None:
    """(first missing, end of the missing range, where to resume) when `position` is out of the log."""
    if facts.low is not None and position < facts.low:
        return position, facts.low, facts.low
    if facts.high is not None and position > facts.high:
        return facts.high, position, facts.high
    return None
