"""Window closing rules with an injected clock: records, bytes, time, and dropping partitions."""

from __future__ import annotations

import pytest

from consumer.window import Trigger, Window, WindowPolicy
from pipeline.records import Record, ascending_runs


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rec(offset: int, partition: int = 0, size: int = 10, topic: str = "t") -> Record:
    return Record(topic, partition, offset, None, b"x" * size)


def test_closes_on_records() -> None:
    window = Window(WindowPolicy(max_records=3, max_bytes=10**6, max_wait_ms=10_000), FakeClock())
    for offset in range(2):
        window.add(rec(offset))
        assert window.ready() is None
    window.add(rec(2))
    assert window.ready() is Trigger.RECORDS


def test_closes_on_bytes() -> None:
    window = Window(WindowPolicy(max_records=100, max_bytes=25, max_wait_ms=10_000), FakeClock())
    window.add(rec(0, size=12))
    window.add(rec(1, size=12))
    assert window.ready() is None
    window.add(rec(2, size=1))
    assert window.ready() is Trigger.BYTES
    assert window.bytes == 25


def test_closes_on_time_measured_from_the_first_record() -> None:
    clock = FakeClock()
    window = Window(WindowPolicy(max_records=100, max_bytes=10**6, max_wait_ms=500), clock)
    assert window.ready() is None and window.time_left() is None
    clock.now += 10  # an empty window never times out, and the clock only starts at the first record
    window.add(rec(0))
    clock.now += 0.3
    window.add(rec(1))
    assert window.ready() is None
    assert window.time_left() == pytest.approx(0.2)
    clock.now += 0.2
    assert window.ready() is Trigger.TIME


def test_records_win_over_time_when_both_apply() -> None:
    clock = FakeClock()
    window = Window(WindowPolicy(max_records=1, max_bytes=10**6, max_wait_ms=500), clock)
    window.add(rec(0))
    clock.now += 1
    assert window.ready() is Trigger.RECORDS


def test_take_orders_by_partition_then_offset_and_resets() -> None:
    clock = FakeClock()
    window = Window(WindowPolicy(max_records=10, max_bytes=10**6, max_wait_ms=500), clock)
    for record in (rec(5, 1), rec(7, 0), rec(6, 1), rec(8, 0), rec(1, 0, topic="a")):
        window.add(record)
    taken = window.take()
    assert [(r.topic, r.partition, r.offset) for r in taken] == [
        ("a", 0, 1), ("t", 0, 7), ("t", 0, 8), ("t", 1, 5), ("t", 1, 6),
    ]  # fmt: skip
    assert len(window) == 0 and window.bytes == 0 and window.time_left() is None


def test_drop_forgets_partitions_and_their_bytes() -> None:
    window = Window(WindowPolicy(max_records=10, max_bytes=10**6, max_wait_ms=500), FakeClock())
    window.add(rec(0, 0, size=5))
    window.add(rec(0, 1, size=7))
    assert window.drop([("t", 1), ("t", 9)]) == 1
    assert len(window) == 1 and window.bytes == 5
    window.drop([("t", 0)])
    assert window.time_left() is None


def test_room_shrinks_to_at_least_one() -> None:
    window = Window(WindowPolicy(max_records=2, max_bytes=10**6, max_wait_ms=500), FakeClock())
    assert window.room == 2
    window.add(rec(0))
    window.add(rec(1))
    assert window.room == 1


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        WindowPolicy(max_records=0)


def test_extend_adds_a_batch_and_returns_its_bytes() -> None:
    clock = FakeClock()
    window = Window(WindowPolicy(max_records=10, max_bytes=10**6, max_wait_ms=500), clock)
    assert window.extend([]) == 0 and window.time_left() is None
    size = window.extend(ascending_runs([rec(0, 0, size=3), rec(0, 1, size=4), Record("t", 0, 1, b"kk", None)]))
    assert size == 9 and window.bytes == 9 and len(window) == 3
    assert [(r.partition, r.offset) for r in window.take()] == [(0, 0), (0, 1), (1, 0)]
