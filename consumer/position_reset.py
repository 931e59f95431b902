"""`microbatch positions reset`: the operator's way to move stored positions (out of a position gap, past
a re-created topic, back to replay a range), like `kafka-consumer-groups --reset-offsets`.

The new positions are written in one transaction, each only if its row still holds what was read
(a consumer writing meanwhile makes the reset read again, at most a few times), with an audit row
per partition (kind `reset`) and the topic's current ID. It is safe while consumers run: their next
write fails the compare-and-set, re-reads the stored position and continues from the new one; a
consumer halted on a position gap picks it up at its next retry, without a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.app import StartupError, build_target, check_database, check_kafka, database_error, quiet_logger
from consumer.cli_args import NEEDS_OFFSET
from consumer.kafka_clients import made
from consumer.kafka_config import consumer_config
from consumer.log_facts import LogFacts
from consumer.settings import Settings
from pipeline.errors import DatabaseFailure
from pipeline.offsets import PositionChange, PositionConflict, StoredPosition
from pipeline.records import PartitionId
from pipeline.target import Target

ATTEMPTS = 5
# Kafka's offsets_for_times reads a negative time as a request (-1 latest, -2 earliest), not a time.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ResetError(Exception):
    """The reset cannot be done; str() says why (a user mistake or an unreachable service)."""


@dataclass(frozen=True)
class Moved:
    """One partition's stored position before and after."""

    pid: PartitionId
    before: StoredPosition | None
    after: StoredPosition
    low: int | None
    high: int | None


def parse_target(text: str) -> int | str | datetime:
    """`earliest`, `latest`, an offset, or an RFC 3339 timestamp with its UTC offset, not before the Unix
    epoch; ValueError otherwise."""
    if text in {"earliest", "latest"}:
        return text
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(NEEDS_OFFSET)
    if moment < EPOCH:
        raise ValueError("a timestamp before 1970-01-01T00:00:00Z is not a time Kafka can look up: use earliest")
    return moment


def plan_reset(
    target: Target, admin: AdminClient, kafka: Consumer, *, topic: str, partitions: Sequence[int] | None,
    to: int | str | datetime,
) -> list[Moved]:  # fmt: skip
    """Where each partition of `topic` would move (nothing is written)."""
    metadata = admin.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise ResetError(f"topic {topic} does not exist")
    existing = sorted(metadata.partitions)
    chosen = existing if partitions is None else list(partitions)
    unknown = sorted(set(chosen) - set(existing))
    if unknown:
        raise ResetError(f"topic {topic} has no partition {unknown[0]} (partitions 0..{len(existing) - 1})")
    pids = [(topic, p) for p in chosen]
    facts = LogFacts(admin, kafka)
    live = facts.topic_ids([topic]).get(topic)
    bounds = facts.bounds(pids)
    stored = target.stored_positions(pids)
    at_time = _offsets_at(kafka, pids, to) if isinstance(to, datetime) else {}
    moved = []
    for pid in pids:
        low, high = bounds.get(pid, (None, None))
        if to == "earliest":
            offset = low
        elif to == "latest" or isinstance(to, datetime):
            offset = at_time.get(pid, high)
        else:
            offset = int(to)
            check_offset(pid, offset, low, high)
        if offset is None:
            raise ResetError(f"cannot read the offsets of {topic}[{pid[1]}] from Kafka")
        moved.append(Moved(pid, stored.get(pid), StoredPosition(offset, live), low, high))
    return moved


def check_offset(pid: PartitionId, offset: int, low: int | None, high: int | None) -> None:
    """ResetError unless `offset` is in the partition's log, from its start to its end (the high watermark,
    where the next message goes): a position outside it is a position gap the consumer would halt on."""
    where = f"{pid[0]}[{pid[1]}]"
    if low is None or high is None:
        raise ResetError(f"cannot read the offsets of {where} from Kafka")
    if not low <= offset <= high:
        raise ResetError(
            f"offset {offset} is outside the log of {where} ({low}..{high}, {high} being its end): "
            "give an offset in that range, or earliest or latest"
        )


def _offsets_at(kafka: Consumer, pids: Sequence[PartitionId], moment: datetime) -> dict[PartitionId, int]:
    """The first offset at or after `moment` in each partition (absent: none, the end applies)."""
    millis = int(moment.timestamp() * 1000)
    try:
        found = kafka.offsets_for_times([TopicPartition(t, p, millis) for t, p in pids], timeout=10)
    except KafkaException as exc:
        raise ResetError(f"cannot look up offsets by time: {exc.args[0].str()}") from None
    return {(tp.topic, tp.partition): int(tp.offset) for tp in found if tp.error is None and tp.offset >= 0}


def apply_reset(
    target: Target, admin: AdminClient, kafka: Consumer, *, topic: str, partitions: Sequence[int] | None,
    to: int | str | datetime, detail: str,
) -> list[Moved]:  # fmt: skip
    """Plan and write the reset in one transaction (read again when a consumer moved a row meanwhile)."""
    for _ in range(ATTEMPTS):
        moved = plan_reset(target, admin, kafka, topic=topic, partitions=partitions, to=to)
        changes = [PositionChange(m.pid, m.before, m.after, "reset", detail) for m in moved if m.before != m.after]
        try:
            target.reset_positions(changes)
        except PositionConflict:
            continue
        return moved
    raise ResetError(f"the stored positions of {topic} kept moving during {ATTEMPTS} attempts: try again")


def active_members(admin: AdminClient, group: str) -> int:
    """How many members the consumer group has now (0 when it cannot be described)."""
    try:
        description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except Exception:  # a broker refusal or a timeout: the note is only advice
        return 0
    return len(description.members)


def reset_command(settings: Settings, topic: str, partition: int | None, to_text: str, *, dry_run: bool) -> list[str]:
    """`microbatch positions reset`: the lines to print. User mistakes raise StartupError."""
    try:
        to = parse_target(to_text)
    except ValueError as exc:
        raise StartupError(
            f"--to {to_text!r}: use earliest, latest, an offset or an RFC 3339 timestamp ({exc})"
        ) from None
    target = build_target(settings)
    admin = check_kafka(settings)
    probe_config: dict[str, Any] = {**consumer_config(settings, target.group), "logger": quiet_logger()}
    probe = made(Consumer, probe_config)
    partitions = None if partition is None else [partition]
    try:
        check_database(settings, target)
        if dry_run:
            moved = plan_reset(target, admin, probe, topic=topic, partitions=partitions, to=to)
        else:
            detail = f"microbatch positions reset --to {to_text}"
            moved = apply_reset(target, admin, probe, topic=topic, partitions=partitions, to=to, detail=detail)
    except DatabaseFailure as error:
        raise database_error(settings, error) from None
    except ResetError as exc:
        raise StartupError(str(exc)) from None
    finally:
        probe.close()
        target.close()
    lines = []
    for m in moved:
        before = "no stored position" if m.before is None else str(m.before.offset)
        what = ("would move" if dry_run else "moved") if m.before != m.after else "unchanged"
        lines.append(f"{m.pid[0]}[{m.pid[1]}]: {before} → {m.after.offset} (log {m.low}..{m.high}) {what}")
    members = active_members(admin, target.group)
    if members and not dry_run:
        lines.append(
            f"{members} consumer(s) of group {target.group} are running: each one's next write fails the "
            "compare-and-set, re-reads the stored position and continues from the new one"
        )
    return lines
