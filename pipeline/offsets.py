"""Kafka positions stored in PostgreSQL, moved only by compare-and-set inside the data's transaction.

The offsets table is the source of truth: `next_offset` per (consumer group, topic, partition) is
the first offset NOT yet applied. A flush moves a partition from the value it read (`expected`) to
the position after its batch; if the row no longer holds `expected`, someone else (a zombie, the
new owner after a rebalance, our own ambiguous COMMIT) already applied that range and the whole
transaction rolls back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psycopg
from psycopg import sql

from pipeline.records import PartitionId


class PositionConflict(Exception):
    """Some partitions were not at the expected position; nothing was written.

    `partitions` lists them; re-read their stored positions and seek there.
    """

    def __init__(self, partitions: Iterable[PartitionId]) -> None:
        self.partitions = sorted(partitions)
        super().__init__(f"stored position moved for {self.partitions}")


class OffsetsTable:
    """Reads and compare-and-sets the positions of one consumer group."""

    def __init__(self, schema: str, table: str, group: str) -> None:
        self.group = group
        name = sql.Identifier(schema, table)
        self._read = sql.SQL(
            "SELECT topic, partition, next_offset FROM {} WHERE consumer_group = %s "
            "AND (topic, partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))"
        ).format(name)
        self._read_all = sql.SQL(
            "SELECT topic, partition, next_offset FROM {} WHERE consumer_group = %s ORDER BY 1, 2"
        ).format(name)
        # One statement per kind, whatever the number of partitions: unnest() the parameters.
        self._update = sql.SQL(
            "UPDATE {} AS o SET next_offset = v.new_offset, updated_at = now() "
            "FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bigint[]) "
            "AS v(topic, partition, expected, new_offset) "
            "WHERE o.consumer_group = %s AND o.topic = v.topic AND o.partition = v.partition "
            "AND o.next_offset = v.expected RETURNING o.topic, o.partition"
        ).format(name)
        self._insert = sql.SQL(
            "INSERT INTO {} (consumer_group, topic, partition, next_offset) "
            "SELECT %s, topic, partition, new_offset FROM unnest(%s::text[], %s::int[], %s::bigint[]) "
            "AS v(topic, partition, new_offset) ON CONFLICT DO NOTHING RETURNING topic, partition"
        ).format(name)
        self._force = sql.SQL(
            "UPDATE {} AS o SET next_offset = v.new_offset, updated_at = now() "
            "FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS v(topic, partition, new_offset) "
            "WHERE o.consumer_group = %s AND o.topic = v.topic AND o.partition = v.partition"
        ).format(name)

    def read(self, conn: psycopg.Connection[Any], partitions: Iterable[PartitionId]) -> dict[PartitionId, int]:
        """Stored positions of `partitions`; a partition without a row is absent from the result."""
        wanted = sorted(partitions)
        if not wanted:
            return {}
        rows = conn.execute(self._read, (self.group, [t for t, _ in wanted], [p for _, p in wanted])).fetchall()
        return {(str(row[0]), int(row[1])): int(row[2]) for row in rows}

    def read_all(self, conn: psycopg.Connection[Any]) -> dict[PartitionId, int]:
        """Every stored position of this group."""
        rows = conn.execute(self._read_all, (self.group,)).fetchall()
        return {(str(row[0]), int(row[1])): int(row[2]) for row in rows}

    def compare_and_set(
        self,
        conn: psycopg.Connection[Any],
        expected: Mapping[PartitionId, int | None],
        positions: Mapping[PartitionId, int],
    ) -> Callable[[], None]:
        """Move every partition in `positions` from `expected` (None: no row yet): send the statements
        now, and return the check that raises PositionConflict naming the partitions that did not match.

        Must run inside the flush transaction, first, so the row locks order concurrent writers; the
        caller rolls back on a conflict. In pipeline mode the statements are only queued: call the
        check once the pipeline has synced (BEGIN and the compare-and-set travel in one round trip).
        """
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
        """Set positions of rows this transaction already compare-and-set (and so holds locked)."""
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
