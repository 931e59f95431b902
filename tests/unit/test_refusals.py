"""Refusals' decisions, on the real Positions, Pending and Window: what is written before a refused or
unreadable partition is acted on, which errors wait for a failed write's retry, when they are due, and
which holds are let go. The hand-over, the seeker and the flow control are stand-ins that record what
is asked of them; tests/integration/test_refused_as_a_write_fails.py runs it against real Kafka and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from consumer.consume_errors import SortedErrors
from consumer.pending import Pending
from consumer.positions import Positions
from consumer.refusals import Refusals
from consumer.window import Trigger, Window, WindowPolicy
from pipeline.records import PartitionId, Record, partition_spans

A, B = ("t", 0), ("t", 1)
REFUSED = "Fetch position offset 80 is out of range for partition: Broker: Offset out of range"
TRUNCATED = (
    "Partition log truncation detected at offset 80 (leader epoch 0): broker end offset is 40 "
    "(offset leader epoch 0). Reset to INVALID.: Local: Partition log truncation detected (broker 1)"
)
BAD_MSG = "Local: Bad message format"


@dataclass
class Loop:
    """The hand-over, the seeker and the flow control as far as Refusals uses them. A write stores
    what it writes (`Positions.committed`) unless `fails`; then its records are pending again and a
    retry waits."""

    positions: Positions
    pending: Pending = field(default_factory=Pending)
    waiting: bool = False
    fails: bool = False
    calls: list[str] = field(default_factory=list)

    def settle(self) -> bool:
        self.calls.append("settle")
        return True

    def write_now(self, window: Window, trigger: Trigger) -> None:
        self.calls.append(f"write_now {trigger}")
        self.pending.add_window(window, trigger)
        self.write()

    def write(self) -> None:
        """What a write (or the retry's) does with everything pending."""
        records, trigger = self.pending.take()
        if self.fails:
            self.pending.give_back(records, trigger)
            self.waiting = True
            return
        self.positions.committed({pid: end for pid, (_, end) in partition_spans(records).items()})

    def out_of_range(self, pid: PartitionId, why: str) -> None:
        self.calls.append(f"out_of_range {pid[1]}")
        self.positions.forget([pid])

    def unreadable(self, pid: PartitionId, offset: int | None, why: str) -> None:
        self.calls.append(f"unreadable {pid[1]} at {offset}")
        self.positions.halt(pid, why)


def _records(pid: PartitionId, first: int, end: int) -> list[Record]:
    return [Record(pid[0], pid[1], offset, None, b"{}") for offset in range(first, end)]


def _read(positions: Positions, window: Window, pid: PartitionId, first: int, end: int) -> int:
    """Records `first`..`end - 1` of `pid` into the window, as far as `Positions.accept` takes them; how many."""
    accepted = positions.accept([(pid, _records(pid, first, end))])
    window.extend(accepted)
    return sum(len(run) for _, run in accepted)


def _setup(*, failed_write: bool) -> tuple[Refusals, Loop, Positions, Window]:
    """A and B stored at 10; A read up to 80, B up to 30. With `failed_write`, A's 10..59 and B's 10..29
    were in a write that failed (pending, a retry waiting) and A's 60..79 are in the window; without,
    all of it is in the window."""
    positions = Positions()
    loop, window = Loop(positions), Window(WindowPolicy(), clock=lambda: 0.0)
    positions.assign(A, 10)
    positions.assign(B, 10)
    if failed_write:
        positions.accept([(A, _records(A, 10, 60)), (B, _records(B, 10, 30))])
        loop.pending.give_back([*_records(A, 10, 60), *_records(B, 10, 30)], Trigger.RECORDS)
        loop.waiting = True
        _read(positions, window, A, 60, 80)
    else:
        _read(positions, window, A, 10, 80)
        _read(positions, window, B, 10, 30)
    refusals = Refusals(positions, window=window, handover=loop, seeker=loop, flow=loop)  # type: ignore[arg-type]
    return refusals, loop, positions, window


def _retry(loop: Loop, window: Window) -> None:
    """The loop's step 6 when the retry is due: the window joins what is pending, and it is written."""
    loop.pending.add_window(window, Trigger.TIME)
    loop.waiting = loop.fails
    loop.write()


def test_with_no_retry_waiting_what_was_read_is_written_before_the_partition_is_placed_again() -> None:
    refusals, loop, positions, _ = _setup(failed_write=False)
    refusals.act(SortedErrors(refused={A: REFUSED}))
    assert loop.calls == ["settle", "write_now halt", "out_of_range 0"]
    assert positions.stored(B) == 30 and not refusals, "written, A up to where it was read (then forgotten)"


def test_an_error_while_a_failed_write_waits_for_its_retry_is_acted_on_once_the_retry_wrote_what_was_read() -> None:
    refusals, loop, positions, window = _setup(failed_write=True)
    refusals.act(SortedErrors(refused={A: REFUSED}))
    assert loop.calls == ["settle"], "nothing written (the backoff holds) and nothing dropped"
    assert refusals and positions.held(A) == 80, "held up to where A was read"
    assert _read(positions, window, A, 80, 90) == 0 and _read(positions, window, B, 30, 40) == 10, "A reads no more"
    refusals.act_on_due()
    assert loop.calls == ["settle"], "not written yet"
    _retry(loop, window)
    assert positions.stored(A) == 80, "the retry wrote the failed write's records and the window's"
    refusals.act_on_due()
    assert loop.calls == ["settle", "settle", "out_of_range 0"] and not refusals
    refusals.act_on_due()
    assert loop.calls.count("out_of_range 0") == 1, "once"


def test_a_write_that_fails_as_the_error_comes_holds_it_for_its_retry() -> None:
    refusals, loop, positions, window = _setup(failed_write=False)
    loop.fails = True
    refusals.act(SortedErrors(unreadable={A: (80, BAD_MSG)}))
    assert loop.calls == ["settle", "write_now halt"] and positions.held(A) == 80
    loop.fails = False
    _retry(loop, window)
    refusals.act_on_due()
    assert loop.calls[-1] == "unreadable 0 at 80" and positions.stored(A) == 80, "halted where reading stopped"


def test_a_truncated_log_is_placed_again_at_once_and_nothing_read_past_the_divergence_is_written() -> None:
    refusals, loop, positions, _ = _setup(failed_write=False)
    refusals.act(SortedErrors(refused={A: TRUNCATED}))
    assert loop.calls == ["settle", "out_of_range 0"], "placement reads again from where the log diverged"
    refusals, loop, positions, _ = _setup(failed_write=True)
    refusals.act(SortedErrors(refused={A: TRUNCATED}))
    assert loop.calls == ["settle", "out_of_range 0"] and not refusals and positions.held(A) is None


def test_an_error_repeated_for_a_held_partition_is_absorbed() -> None:
    refusals, loop, _, window = _setup(failed_write=True)
    refusals.act(SortedErrors(unreadable={A: (80, BAD_MSG)}))
    refusals.act(SortedErrors(unreadable={A: (80, BAD_MSG)}, refused={A: REFUSED}))
    _retry(loop, window)
    refusals.act_on_due()
    assert [c for c in loop.calls if c != "settle"] == ["unreadable 0 at 80"], "the first error stands, once"


def test_a_hold_ended_by_a_placement_or_a_release_is_let_go() -> None:
    ends: list[Callable[[Positions], object]] = [
        lambda p: p.forget([A]),
        lambda p: p.sought(A, 40, 40),
        lambda p: p.halt(A, "a position gap"),
        lambda p: p.release([A]),
    ]
    for end_it in ends:
        refusals, loop, positions, _ = _setup(failed_write=True)
        refusals.act(SortedErrors(refused={A: REFUSED}))
        end_it(positions)
        assert positions.held(A) is None
        positions.committed({A: 80})
        refusals.act_on_due()
        assert loop.calls == ["settle"] and not refusals, "its records were dropped with it: read again where placed"


def test_a_partition_with_nothing_to_write_or_whose_position_is_not_known_is_acted_on_at_once() -> None:
    refusals, loop, positions, _ = _setup(failed_write=True)
    positions.forget([A])
    refusals.act(SortedErrors(refused={A: REFUSED}))
    assert loop.calls == ["settle", "out_of_range 0"], "the seeker decides, as before"
    refusals, loop, positions, window = _setup(failed_write=True)
    window.drop([A])
    loop.pending.drop([A])
    refusals.act(SortedErrors(refused={A: REFUSED}))
    assert loop.calls == ["settle", "out_of_range 0"] and not refusals


def test_nothing_is_written_first_for_a_partition_with_nothing_read() -> None:
    refusals, loop, _, window = _setup(failed_write=False)
    window.drop([A])  # e.g. not placed yet: a refusal at its placeholder offset
    refusals.act(SortedErrors(refused={A: REFUSED}))
    assert loop.calls == ["settle", "out_of_range 0"], "B's window is not cut short for it"
    assert len(window) == 20
