"""Kafka positions stored in PostgreSQL, moved only by compare-and-set inside the data's transaction.

The offsets table is the source of truth: `next_offset` per (consumer group, topic, partition) is
the first offset NOT yet applied, and `topic_id` the Kafka topic ID (the topic's incarnation) it
belongs to, with `leader_epoch`: the Kafka leader epoch of the record before it, valid only while
`leader_epoch_offset` equals `next_offset` (a writer that does not know the column, an older
microbatch or an operator's UPDATE, moves the offset and leaves the epoch behind: it then no longer
applies). A flush moves a partition from the value it read (`expected`) to the position after its
batch; if the row no longer holds `expected` (or belongs to another incarnation of the topic),
someone else (a zombie, the new owner after a rebalance, our own ambiguous COMMIT, an operator's
reset) already moved it and the whole transaction rolls back.

Every position that moves for any other reason than a write (a first placement, a re-created
topic, a gap, an operator's reset, an adopted topic ID) is moved by `reset`, with a row in the
audit table `microbatch_position_events`, in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pipeline.records import PartitionId

EVENTS_TABLE = "microbatch_position_events"


class PositionConflict(Exception):
    """Some partitions were not at the expected position; nothing was written.

    `partitions` lists them; re-read their stored positions and seek there.
    """

    def __init__(self, partitions: Iterable[PartitionId]) -> None:
        self.partitions = sorted(partitions)
        super().__init__(f"stored position moved for {self.partitions}")


@dataclass(frozen=True)
class StoredPosition:
    """A stored row: the position, and the ID of the topic incarnation it belongs to (None: not known,
    a row written before microbatch recorded topic IDs)."""

    offset: int
    topic_id: str | None = None
    leader_epoch: int | None = None
    """The leader epoch of the record before `offset` (None: not known): seeking with it lets the broker
    tell a log truncated below `offset` since (consumer/placement.py)."""


@dataclass(frozen=True)
class PositionChange:
    """A position moved outside a write, with why (`kind`, one of the audit kinds) and the details.

    `old` None: the partition has no stored row yet (it is inserted); `new` equal to `old`: nothing
    moves, the event is only audited (a halt). Kinds: `topic_recreated`, `gap_halted`, `gap_skipped`,
    `log_truncated`, `truncation_halted`, `reset`, `adopted_kafka_offset`, `adopted_topic_id`.
    """

    pid: PartitionId
    old: StoredPosition | None
    new: StoredPosition
    kind: str
    detail: str = ""


class OffsetsTable:
    """Reads, compare-and-sets and resets the positions of one consumer group."""

    def __init__(self, schema: str, table: str, group: str) -> None:
        self.group = group
        name = sql.Identifier(schema, table)
        self._events = sql.Identifier(schema, EVENTS_TABLE)
        # The epoch only where it was stored with the offset the row holds now (the module docstring).
        self._read = sql.SQL(
            "SELECT topic, partition, next_offset, topic_id, CASE WHEN leader_epoch_offset = next_offset "
            "THEN leader_epoch END FROM {} WHERE consumer_group = %s "
            "AND (topic, partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))"
        ).format(name)
        self._read_all = sql.SQL(
            "SELECT topic, partition, next_offset, topic_id, CASE WHEN leader_epoch_offset = next_offset "
            "THEN leader_epoch END FROM {} WHERE consumer_group = %s ORDER BY 1, 2"
        ).format(name)
        # One statement per kind, whatever the number of partitions: unnest() the parameters. A row of
        # another incarnation of the topic does not match (a NULL on either side is not a mismatch).
        self._update = sql.SQL(
            "UPDATE {} AS o SET next_offset = v.new_offset, topic_id = COALESCE(v.topic_id, o.topic_id), "
            "leader_epoch = v.leader_epoch, leader_epoch_offset = v.new_offset, updated_at = now() "
            "FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bigint[], %s::text[], %s::int[]) "
            "AS v(topic, partition, expected, new_offset, topic_id, leader_epoch) "
            "WHERE o.consumer_group = %s AND o.topic = v.topic AND o.partition = v.partition "
            "AND o.next_offset = v.expected AND (o.topic_id IS NULL OR v.topic_id IS NULL OR o.topic_id = v.topic_id) "
            "RETURNING o.topic, o.partition"
        ).format(name)
        self._insert = sql.SQL(
            "INSERT INTO {} (consumer_group, topic, partition, next_offset, topic_id, leader_epoch, "
            "leader_epoch_offset) "
            "SELECT %s, topic, partition, new_offset, topic_id, leader_epoch, new_offset "
            "FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::text[], %s::int[]) "
            "AS v(topic, partition, new_offset, topic_id, leader_epoch) "
            "ON CONFLICT DO NOTHING RETURNING topic, partition"
        ).format(name)
        self._force = sql.SQL(
            "UPDATE {} AS o SET next_offset = v.new_offset, leader_epoch = NULL, updated_at = now() "
            "FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS v(topic, partition, new_offset) "
            "WHERE o.consumer_group = %s AND o.topic = v.topic AND o.partition = v.partition"
        ).format(name)
        self._reset = sql.SQL(
            "UPDATE {} SET next_offset = %s, topic_id = %s, leader_epoch = %s, leader_epoch_offset = %s, "
            "updated_at = now() WHERE consumer_group = %s "
            "AND topic = %s AND partition = %s AND next_offset = %s AND topic_id IS NOT DISTINCT FROM %s"
        ).format(name)
        self._record = sql.SQL(
            "INSERT INTO {} (consumer_group, topic, partition, kind, old_position, new_position, old_topic_id, "
            "new_topic_id, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        ).format(self._events)

    def read(
        self, conn: psycopg.Connection[Any], partitions: Iterable[PartitionId]
    ) -> dict[PartitionId, StoredPosition]:
        """Stored positions of `partitions`; a partition without a row is absent from the result."""
        wanted = sorted(partitions)
        if not wanted:
            return {}
        rows = conn.execute(self._read, (self.group, [t for t, _ in wanted], [p for _, p in wanted])).fetchall()
        return {(str(row[0]), int(row[1])): StoredPosition(int(row[2]), row[3], row[4]) for row in rows}

    def read_all(self, conn: psycopg.Connection[Any]) -> dict[PartitionId, StoredPosition]:
        """Every stored position of this group."""
        rows = conn.execute(self._read_all, (self.group,)).fetchall()
        return {(str(row[0]), int(row[1])): StoredPosition(int(row[2]), row[3], row[4]) for row in rows}

    def compare_and_set(
        self,
        conn: psycopg.Connection[Any],
        expected: Mapping[PartitionId, int | None],
        positions: Mapping[PartitionId, int],
        topic_ids: Mapping[PartitionId, str | None] | None = None,
        leader_epochs: Mapping[PartitionId, int | None] | None = None,
    ) -> Callable[[], None]:
        """Move every partition in `positions` from `expected` (None: no row yet): send the statements
        now, and return the check that raises PositionConflict naming the partitions that did not match.

        `topic_ids` ((topic, partition) → the topic ID it was read from, when known) are stored with the
        positions, and a row of another incarnation of the topic does not match; `leader_epochs` (the leader
        epoch of each partition's last record, when known) are stored with them. Must run inside the flush transaction,
        first, so the row locks order concurrent writers; the caller rolls back on a conflict. In
        pipeline mode the statements are only queued: call the check once the pipeline has synced
        (BEGIN and the compare-and-set travel in one round trip).
        """
        ids, epochs = topic_ids or {}, leader_epochs or {}
        updates = sorted(pid for pid in positions if expected.get(pid) is not None)
        inserts = sorted(pid for pid in positions if expected.get(pid) is None)
        cursors: list[psycopg.Cursor[Any]] = []
        if updates:
            cursors.append(
                conn.execute(
                    self._update,
                    (
                        [t for t, _ in updates],
                        [p for _, p in updates],
                        [expected[pid] for pid in updates],
                        [positions[pid] for pid in updates],
                        [ids.get(pid) for pid in updates],
                        [epochs.get(pid) for pid in updates],
                        self.group,
                    ),
                )
            )
        if inserts:
            cursors.append(
                conn.execute(
                    self._insert,
                    (
                        self.group,
                        [t for t, _ in inserts],
                        [p for _, p in inserts],
                        [positions[pid] for pid in inserts],
                        [ids.get(pid) for pid in inserts],
                        [epochs.get(pid) for pid in inserts],
                    ),
                )
            )

        def check() -> None:
            applied = {(str(row[0]), int(row[1])) for cursor in cursors for row in cursor.fetchall()}
            missed = set(positions) - applied
            if missed:
                raise PositionConflict(missed)

        return check

    def move(self, conn: psycopg.Connection[Any], positions: Mapping[PartitionId, int]) -> None:
        """Set positions of rows this transaction already compare-and-set (and so holds locked). The
        epoch stored by the compare-and-set belongs to the batch's last record, not to these: it is
        cleared (a position without an epoch is read again without the broker's truncation check)."""
        pids = sorted(positions)
        if pids:
            conn.execute(
                self._force,
                (
                    [t for t, _ in pids],
                    [p for _, p in pids],
                    [positions[pid] for pid in pids],
                    self.group,
                ),
            )

    def reset(self, conn: psycopg.Connection[Any], changes: Sequence[PositionChange]) -> None:
        """Apply `changes` (each only if its row still holds `old`) and audit each, in the caller's
        transaction. Raises PositionConflict naming the rows that moved meanwhile (roll back, re-read)."""
        moved: list[PartitionId] = []
        for change in changes:
            topic, partition = change.pid
            if change.old == change.new:
                pass  # audited only: nothing moves
            elif change.old is None:
                inserted = conn.execute(
                    self._insert,
                    (self.group, [topic], [partition], [change.new.offset], [change.new.topic_id],
                     [change.new.leader_epoch]),
                ).fetchall()  # fmt: skip
                if not inserted:
                    moved.append(change.pid)
            else:
                updated = conn.execute(
                    self._reset,
                    (change.new.offset, change.new.topic_id, change.new.leader_epoch, change.new.offset, self.group,
                     topic, partition, change.old.offset, change.old.topic_id),
                )  # fmt: skip
                if updated.rowcount != 1:
                    moved.append(change.pid)
            old = change.old
            conn.execute(
                self._record,
                (self.group, topic, partition, change.kind, None if old is None else old.offset, change.new.offset,
                 None if old is None else old.topic_id, change.new.topic_id, change.detail),
            )  # fmt: skip
        if moved:
            raise PositionConflict(moved)
