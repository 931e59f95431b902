"""What the loop does with a fetch position the broker refused and a record batch it could not read.

A refused fetch position (out of range) places the partition again (`Seeker.out_of_range`), and a
record batch the Kafka client could not read halts it on its stored position (`Seeker.unreadable`):
either drops the partition's buffered records, to be read again from the broker. Read again, they may
not be there any more: a topic deleted and re-created shorter is refused at the old offsets, and the
broker deleted the old topic's records with it. So what was read before the error is written first:
- no write waiting for its retry: the window is written at once (`Handover.write_now`), then the
  error is acted on, from the stored position that write left;
- a write waiting for its retry (it failed, maybe just now): its records, and the window's, are
  written by the retry. The partition is held meanwhile (`Positions.hold`: nothing more of it is
  accepted, so the retry's write ends where reading stopped), and the error is acted on once its
  stored position reached that end (`act_on_due`, at each step). librdkafka does not report a
  refusal again (auto.offset.reset = error stops the partition's fetch until a seek), so it is kept
  here. A hold that a placement or a release ended is let go: the partition reads again from where
  it was placed, and an error that persists is reported again.
A refusal that says the log was truncated is acted on at once: what was read past the point where the
log diverged is in no log any more, and placement reads again from that point (consumer/placement.py).

tests/integration/test_refused_as_a_write_fails.py lost every message of a failed write before this.
Loop thread only.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from consumer.consume_errors import SortedErrors
from consumer.flow import FlowControl
from consumer.handover import Handover
from consumer.placement import diverged_at
from consumer.positions import Positions
from consumer.seeking import Seeker
from consumer.window import Trigger, Window
from pipeline.records import PartitionId

log = logging.getLogger("microbatch.loop")
V = TypeVar("V")


class Refusals:
    """Acts on refused and unreadable partitions, and holds those a retry must write first."""

    def __init__(
        self, positions: Positions, *, window: Window, handover: Handover, seeker: Seeker, flow: FlowControl
    ) -> None:
        self._positions, self._window, self._handover = positions, window, handover
        self._seeker, self._flow = seeker, flow
        self._held = SortedErrors()

    def __bool__(self) -> bool:
        """True while an error is held."""
        return self._held.any()

    def act(self, errors: SortedErrors) -> None:
        """Act on a consume() batch's refused and unreadable partitions, once the records read before
        them were accepted: what was read before is written first, or held for the retry that writes it."""
        self._handover.settle()
        truncated = {pid: why for pid, why in errors.refused.items() if diverged_at(why) is not None}
        for pid, why in truncated.items():  # read again from where the log diverged: nothing past it written
            self._seeker.out_of_range(pid, why)
        rest = SortedErrors(
            {pid: why for pid, why in errors.refused.items() if pid not in truncated}, errors.unreadable
        )
        if not rest.any():
            return
        read = self._window.partitions() | self._handover.pending.partitions()
        if not self._flow.waiting and read & (rest.refused.keys() | rest.unreadable.keys()):
            self._handover.write_now(self._window, Trigger.HALT)  # if it fails, its retry writes them
        self._apply(self._hold(rest))

    def act_on_due(self) -> None:
        """Act on the held errors whose partitions' records are written now; let go of holds ended by a
        placement or a release."""
        if not self:
            return
        due = SortedErrors(self._written(self._held.refused), self._written(self._held.unreadable))
        if due.any():
            self._handover.settle()
            self._apply(due)

    def _hold(self, errors: SortedErrors) -> SortedErrors:
        """Hold the errors of partitions with records a retry is to write; returns the others, to act on
        now. An error of a partition held already is absorbed: the first one is acted on (a batch that
        cannot be decompressed is reported at every fetch)."""
        unwritten = self._handover.pending.partitions() | self._window.partitions() if self._flow.waiting else set()
        return SortedErrors(
            self._sort(errors.refused, self._held.refused, unwritten),
            self._sort(errors.unreadable, self._held.unreadable, unwritten),
        )

    def _sort(
        self, errors: dict[PartitionId, V], held: dict[PartitionId, V], unwritten: set[PartitionId]
    ) -> dict[PartitionId, V]:
        """Of `errors`, those to act on now; the others join `held` (see `_hold`)."""
        now = {}
        for pid, error in errors.items():
            if self._positions.held(pid) is not None:
                continue
            if pid in unwritten and (end := self._positions.hold(pid)) is not None:
                held[pid] = error
                log.warning("%s[%d]: %s; acted on once the retry wrote what was read before (up to offset %d)",
                            pid[0], pid[1], _reason(error), end)  # fmt: skip
            else:
                now[pid] = error
        return now

    def _written(self, held: dict[PartitionId, V]) -> dict[PartitionId, V]:
        """Of `held`, taken out: those whose records are written (returned), and those let go."""
        written = {}
        for pid in list(held):
            end, stored = self._positions.held(pid), self._positions.stored(pid)
            if end is None:
                del held[pid]  # placed again or released since: its records were dropped with it
            elif stored is not None and stored >= end:
                written[pid] = held.pop(pid)
        return written

    def _apply(self, errors: SortedErrors) -> None:
        for pid, why in errors.refused.items():
            self._seeker.out_of_range(pid, why)
        for pid, (offset, why) in errors.unreadable.items():
            self._seeker.unreadable(pid, offset, why)


def _reason(error: object) -> str:
    """The client's words: a refusal's, or an unreadable batch's (offset, words)."""
    return error[1] if isinstance(error, tuple) else str(error)
