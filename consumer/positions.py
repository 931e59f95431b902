"""The one owner of every partition's position on the consumer side. Pure (no I/O).

PostgreSQL holds the truth: the *stored position* of each partition (the offset of the next record
not yet written, as in Kafka). This object is the consumer's copy of it and everything derived from
it; every other part asks it:

- which partitions this consumer owns, and whether their stored position is *known* (read from
  PostgreSQL and sought to) — records of unknown partitions are dropped until they are;
- the *fetch position*: the offset after the last record accepted into a window; an earlier offset
  is a redelivery (after a seek or a rebalance) and is dropped, so a record enters a window once;
- where the current assignment started reading (`assigned_at`), to return there if the database
  loses the partition's row;
- which buffered records are still to be written (`unwritten`), and the `Batch` a write makes of
  them: the records with the positions they move, from the stored ones to the ones after them.

It changes on assignment and release (rebalance), on acceptance (consume), on every COMMIT
(`committed`), and when a stored position turns out to be wrong (`forget`, then `sought`).
Loop thread only.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pipeline.records import OFFSET_OF, Batch, PartitionId, Record, Run, ordered_runs, partition_spans


@dataclass
class PartitionPosition:
    """One owned partition: see the module docstring for the vocabulary."""

    stored: int | None  # None: no stored row (yet)
    known: bool
    fetch: int | None  # None: take whatever Kafka delivers first
    assigned_at: int | None = None
    topic_id: str | None = None  # the topic incarnation being read (None: not known)
    halt: str | None = None  # why the partition may not be read (a position gap, a re-created topic)
    # The fetch position when the broker last said, after they were read, that the records are of the
    # incarnation `topic_id` (IncarnationWatch.confirm): those below it are, since it was placed.
    proven: int | None = None
    # Set while an error of the partition waits for a failed write's records to be written (`hold`):
    # the fetch position then, the end of what was read. Nothing more of it is accepted meanwhile.
    held: int | None = None


class Positions:
    """The partitions this consumer owns and their positions."""

    def __init__(self) -> None:
        self._owned: dict[PartitionId, PartitionPosition] = {}

    def __contains__(self, pid: object) -> bool:
        return pid in self._owned

    def __len__(self) -> int:
        return len(self._owned)

    def partitions(self) -> list[PartitionId]:
        return sorted(self._owned)

    def unknown(self) -> list[PartitionId]:
        """Owned partitions whose stored position still has to be read and sought to (not halted)."""
        return sorted(pid for pid, state in self._owned.items() if not state.known and state.halt is None)

    def halted(self) -> dict[PartitionId, str]:
        """Owned partitions that may not be read until their position is valid again, and why."""
        return {pid: state.halt for pid, state in sorted(self._owned.items()) if state.halt is not None}

    def halt(self, pid: PartitionId, reason: str) -> None:
        """The partition's position is not valid (placement): nothing of it is read or written."""
        state = self._owned.get(pid)
        if state is not None:
            state.known, state.fetch, state.halt, state.held = False, None, reason, None

    def known(self) -> list[PartitionId]:
        return sorted(pid for pid, state in self._owned.items() if state.known)

    def stored(self, pid: PartitionId) -> int | None:
        state = self._owned.get(pid)
        return None if state is None else state.stored

    def assigned_at(self, pid: PartitionId) -> int | None:
        state = self._owned.get(pid)
        return None if state is None else state.assigned_at

    def diverged(self, pid: PartitionId, offset: int) -> None:
        """The log diverged at `offset`: what this ownership covers starts there at the latest (a row
        that vanishes is read again from there, not from a position the broker refused)."""
        state = self._owned.get(pid)
        if state is not None and state.assigned_at is not None and offset < state.assigned_at:
            state.assigned_at = offset

    # -- ownership ---------------------------------------------------------------------------------

    def assign(self, pid: PartitionId, stored: int | None, *, known: bool = True, topic_id: str | None = None) -> None:
        """Take ownership; records start at `stored` (or wherever Kafka starts when None)."""
        self._owned[pid] = PartitionPosition(stored, known, stored, stored, topic_id)

    def release(self, pids: Iterable[PartitionId]) -> list[PartitionId]:
        """Give up ownership (revoked or lost); returns the partitions that were owned."""
        return [pid for pid in pids if self._owned.pop(pid, None) is not None]

    def forget(self, pids: Iterable[PartitionId]) -> list[PartitionId]:
        """Our copy of these stored positions is wrong: unknown until re-read and sought (where the
        assignment started is kept). Returns the owned ones."""
        owned = []
        for pid in pids:
            state = self._owned.get(pid)
            if state is not None:
                state.stored, state.known, state.fetch, state.proven, state.held = None, False, None, None, None
                owned.append(pid)
        return owned

    def sought(self, pid: PartitionId, stored: int | None, fetch: int | None, topic_id: str | None = None) -> None:
        """The partition was sought to `fetch` after reading `stored` from PostgreSQL."""
        state = self._owned.get(pid)
        if state is not None:
            state.stored, state.known, state.fetch, state.halt, state.proven = stored, True, fetch, None, None
            state.held = None
            state.topic_id = topic_id or state.topic_id
            if state.assigned_at is None or (fetch is not None and fetch < state.assigned_at):
                state.assigned_at = fetch

    def prove(self, pids: Iterable[PartitionId]) -> None:
        """The broker said, after every record accepted so far was read, that the topic of each of
        `pids` is still the incarnation it is read from: the records below the fetch position are."""
        for pid in pids:
            if (state := self._owned.get(pid)) is not None and state.known:
                state.proven = state.fetch

    def proven(self, pid: PartitionId) -> int | None:
        """The offset below which the records read since the partition was placed are proven to be of
        the incarnation it is read from (`prove`); None when nothing is."""
        state = self._owned.get(pid)
        return state.proven if state is not None and state.known else None

    def cut(self, pid: PartitionId, end: int) -> None:
        """Records at or after `end` are not to be written (their incarnation is unknown): the fetch
        position goes back to `end`, so `unwritten` leaves them out (the partition is paused and placed
        again once the records before `end` are written)."""
        state = self._owned.get(pid)
        if state is not None and state.fetch is not None and end < state.fetch:
            state.fetch = end

    def hold(self, pid: PartitionId) -> int | None:
        """Stop accepting records of `pid` until it is placed again (`forget`, `sought`, `halt`) or
        released: an error of it waits until the records read so far are written. Returns the end of
        those records (the fetch position), or None when its position is not known (nothing held)."""
        state = self._owned.get(pid)
        if state is None or not state.known or state.fetch is None:
            return None
        state.held = state.fetch
        return state.held

    def held(self, pid: PartitionId) -> int | None:
        """The end of the records read before `pid` was held (`hold`); None when it is not held (never
        was, or was placed again or released since)."""
        state = self._owned.get(pid)
        return None if state is None else state.held

    # -- records -------------------------------------------------------------------------------------

    def accept(self, runs: Sequence[Run]) -> list[Run]:
        """The records of a consume() batch's runs (`pipeline.records.Run`: offsets strictly ascending)
        that belong in the window, as runs: owned, position known, not held, not a redelivery. Accepting moves
        the fetch position past each accepted record.

        Record by record, a record is accepted when its offset is at or after the fetch position, which
        then moves past it; in a run of ascending offsets those records are a tail of the run, so each
        run is decided once (the first record at or after the fetch position is found by bisection).
        Raises ValueError for a run whose offsets visibly do not ascend (a broken promise of the caller).
        """
        for pid, run in runs:  # every run first: a broken promise changes no position
            if run and run[-1].offset - run[0].offset < len(run) - 1:
                raise ValueError(f"the offsets of a run of {pid} do not ascend")
        owned = self._owned
        accepted: list[Run] = []
        for pid, consumed in runs:
            if not consumed:
                continue
            run = consumed
            state = owned.get(pid)
            if state is None or not state.known or state.held is not None:
                continue
            fetch = state.fetch
            if fetch is not None and run[0].offset < fetch:
                run = run[bisect_left(run, fetch, key=OFFSET_OF) :]
                if not run:
                    continue
            state.fetch = run[-1].offset + 1
            if state.assigned_at is None:
                state.assigned_at = run[0].offset
            accepted.append((pid, run))
        return accepted

    def unwritten(self, records: Sequence[Record]) -> list[Record]:
        """The buffered records still to write: owned, position known, at or after the stored
        position and before the fetch position (a record at or after it will be delivered again,
        after a seek: the copy buffered earlier is stale). `records` are ordered by (topic,
        partition, offset), as pending records are: a run of one partition whose first and last
        records are in bounds is kept whole."""
        owned = self._owned
        kept: list[Record] = []
        for pid, run in ordered_runs(records):
            state = owned.get(pid)
            if state is None or not state.known or state.fetch is None:
                continue
            fetch, stored = state.fetch, state.stored
            if run[-1].offset < fetch and (stored is None or run[0].offset >= stored):
                kept += run
            else:
                kept += [r for r in run if r.offset < fetch and (stored is None or r.offset >= stored)]
        return kept

    def batch(self, records: Sequence[Record]) -> Batch:
        """The write of `records` (ordered, all unwritten): each partition moves from its stored
        position to the one after its last record."""
        spans = partition_spans(records)
        owned = self._owned
        return Batch(
            records,
            {pid: self.stored(pid) for pid in spans},
            {pid: end for pid, (_, end) in spans.items()},
            {pid: owned[pid].topic_id for pid in spans if pid in owned},
        )

    def committed(self, positions: Mapping[PartitionId, int]) -> None:
        """A COMMIT stored `positions` (partitions no longer owned are ignored)."""
        for pid, position in positions.items():
            state = self._owned.get(pid)
            if state is not None:
                state.stored = position

    def topic_ids(self) -> dict[PartitionId, str | None]:
        """The topic ID (incarnation) each owned partition is being read from, where known. Per partition:
        two partitions of one topic can be read from two incarnations of it for a while (one placed again
        on the re-created topic, the other not yet), and each record is stamped with its own."""
        return {pid: state.topic_id for pid, state in self._owned.items() if state.topic_id is not None}

    def incarnations(self) -> dict[PartitionId, str]:
        """The topic ID each owned partition whose position is known is being read from (where known)."""
        return {pid: state.topic_id for pid, state in self._owned.items() if state.known and state.topic_id}

    def lag(self, high_watermarks: Mapping[PartitionId, int]) -> dict[PartitionId, int]:
        """Messages between each stored position and its high watermark (partitions with both)."""
        lags = {}
        for pid, high in high_watermarks.items():
            stored = self.stored(pid)
            if stored is not None and high >= 0:
                lags[pid] = max(0, high - stored)
        return lags
