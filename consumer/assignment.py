"""What this consumer owns right now, and from which offset each partition's records are valid. Pure.

PostgreSQL holds the truth (`next_offset` per partition); this is the consumer's copy of it,
refreshed on assignment, after every commit, and whenever a write finds it stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pipeline.records import PartitionId, Record


@dataclass
class PartitionState:
    """One assigned partition.

    `stored`: next offset stored in PostgreSQL (None: no row yet). `known`: False while the stored
    position could not be read (database down at assignment): such a partition is paused and its
    records are dropped until it has been sought to the stored position. `floor`: records below it
    are stale (already buffered, or before the position we sought to) and are dropped. `origin`:
    where this assignment started; if the database later loses the partition's row (a restore, lost
    asynchronous commits), reading resumes there rather than at Kafka's advisory offset.
    """

    stored: int | None
    known: bool
    floor: int | None
    origin: int | None = None  # first offset this assignment started from (where to go back to)


class Assignment:
    """The partitions this consumer owns, with their stored positions."""

    def __init__(self) -> None:
        self._states: dict[PartitionId, PartitionState] = {}

    def __contains__(self, pid: object) -> bool:
        return pid in self._states

    def __len__(self) -> int:
        return len(self._states)

    def partitions(self) -> list[PartitionId]:
        return sorted(self._states)

    def assign(self, pid: PartitionId, stored: int | None, *, known: bool = True) -> None:
        """Take ownership; records start at `stored` (or wherever Kafka starts when None)."""
        self._states[pid] = PartitionState(stored=stored, known=known, floor=stored, origin=stored)

    def forget(self, pid: PartitionId) -> None:
        """Our copy of the stored position is wrong: unknown until re-read and sought (origin kept)."""
        state = self._states.get(pid)
        if state is not None:
            state.stored, state.known, state.floor = None, False, None

    def origin(self, pid: PartitionId) -> int | None:
        state = self._states.get(pid)
        return None if state is None else state.origin

    def release(self, pids: Iterable[PartitionId]) -> list[PartitionId]:
        """Give up ownership (revoked or lost); returns the partitions that were owned."""
        return [pid for pid in pids if self._states.pop(pid, None) is not None]

    def accept(self, records: Sequence[Record]) -> list[Record]:
        """The records that belong in the window (see `accepts`), for a whole consume() batch at once."""
        states = self._states
        accepted = []
        for record in records:
            state = states.get((record.topic, record.partition))
            if state is None or not state.known:
                continue
            floor = state.floor
            if floor is not None and record.offset < floor:
                continue
            state.floor = record.offset + 1
            if state.origin is None:
                state.origin = record.offset
            accepted.append(record)
        return accepted

    def accepts(self, record: Record) -> bool:
        """True when `record` belongs in the window: owned, position known, not stale.

        Accepting moves the floor past the record, so a re-delivered copy is dropped.
        """
        state = self._states.get(record.partition_id)
        if state is None or not state.known:
            return False
        if state.floor is not None and record.offset < state.floor:
            return False
        state.floor = record.offset + 1
        if state.origin is None:
            state.origin = record.offset
        return True

    def stored(self, pid: PartitionId) -> int | None:
        state = self._states.get(pid)
        return None if state is None else state.stored

    def expected(self, pids: Iterable[PartitionId]) -> dict[PartitionId, int | None]:
        """The stored positions a flush of `pids` compares against."""
        return {pid: self.stored(pid) for pid in pids}

    def committed(self, positions: Mapping[PartitionId, int]) -> None:
        """A flush committed `positions` (partitions no longer owned are ignored)."""
        for pid, position in positions.items():
            state = self._states.get(pid)
            if state is not None:
                state.stored = position

    def sought(self, pid: PartitionId, stored: int | None, floor: int | None) -> None:
        """The partition was sought to `floor` after reading `stored` from PostgreSQL."""
        state = self._states.get(pid)
        if state is not None:
            state.stored, state.known, state.floor = stored, True, floor
            if state.origin is None or (floor is not None and floor < state.origin):
                state.origin = floor

    def unknown(self) -> list[PartitionId]:
        """Owned partitions whose stored position still has to be read."""
        return sorted(pid for pid, state in self._states.items() if not state.known)
