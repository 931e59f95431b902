"""The loop's passes over a window work per run of one partition (pipeline.records: partition_runs,
ordered_runs, records_bytes) instead of per record. Property: for any window the loop can build (any
interleaving of partitions from consume(), offsets increasing with gaps) and any state of the
positions (stored, fetch, unknown, released), each pass gives what the per-record rule gives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.positions import Positions
from consumer.window import Window, WindowPolicy
from pipeline.records import Record, next_positions, partition_spans, records_bytes

PIDS = [("a", 0), ("a", 1), ("b", 0), ("b", 2)]


@st.composite
def consumed(draw: st.DrawFn) -> list[list[Record]]:
    """consume() batches: each partition's offsets increase (with gaps); partitions interleave."""
    next_offset = {pid: draw(st.integers(0, 50)) for pid in PIDS}
    batches = []
    for _ in range(draw(st.integers(1, 4))):
        batch = []
        for pid in draw(st.lists(st.sampled_from(PIDS), max_size=30)):
            offset = next_offset[pid] + draw(st.integers(0, 2))
            next_offset[pid] = offset + 1
            value = draw(st.one_of(st.none(), st.binary(max_size=5)))
            key = draw(st.one_of(st.none(), st.binary(max_size=3)))
            batch.append(Record(pid[0], pid[1], offset, key, value))
        batches.append(batch)
    return batches


def reference_unwritten(positions: Positions, records: list[Record]) -> list[Record]:
    """The rule, record by record (what Positions.unwritten did before it worked per run)."""
    kept = []
    for record in records:
        state = positions._owned.get(record.partition_id)
        if state is None or not state.known or state.fetch is None or record.offset >= state.fetch:
            continue
        if state.stored is None or record.offset >= state.stored:
            kept.append(record)
    return kept


@settings(max_examples=500, deadline=None, database=None, derandomize=True)
@given(batches=consumed(), data=st.data())
def test_per_run_passes_equal_the_per_record_rule(batches: list[list[Record]], data: st.DataObject) -> None:
    window = Window(WindowPolicy(max_records=10**6, max_bytes=10**9, max_wait_ms=10**6), lambda: 0.0)
    positions = Positions()
    for pid in PIDS:
        positions.assign(pid, None)
    every = [record for batch in batches for record in batch]
    for batch in batches:
        accepted = positions.accept(batch)
        assert window.extend(accepted) == sum(r.size for r in accepted) == records_bytes(accepted)
    assert window.bytes == sum(r.size for r in every)
    records = window.take()
    assert records == sorted(every, key=lambda r: (r.topic, r.partition, r.offset))
    for pid in PIDS:  # the state the positions may be in by the time the window is handed over
        choice = data.draw(st.sampled_from(["as is", "stored", "sought", "forgotten", "released"]))
        # Positions at the window's edges matter most: its offsets, one past them, and beyond.
        edges = st.sampled_from(
            sorted({0, 200, *(r.offset + d for r in records if r.partition_id == pid for d in (0, 1))})
        )
        if choice == "stored":
            positions.committed({pid: data.draw(edges)})
        elif choice == "sought":
            positions.sought(pid, data.draw(edges), data.draw(edges))
        elif choice == "forgotten":
            positions.forget([pid])
        elif choice == "released":
            positions.release([pid])
    unwritten = positions.unwritten(records)
    assert unwritten == reference_unwritten(positions, records)
    spans = partition_spans(unwritten)
    assert {pid: end for pid, (_, end) in spans.items()} == next_positions(unwritten)
    for pid, (first, _) in spans.items():
        assert first == min(r.offset for r in unwritten if r.partition_id == pid)


def test_records_visibly_out_of_order_stop_the_pass_instead_of_joining_the_wrong_run() -> None:
    a100, b5, a101 = Record("a", 0, 100, None, b"x"), Record("b", 0, 5, None, b"x"), Record("a", 0, 101, None, b"x")
    positions = Positions()
    positions.assign(("a", 0), 100)
    positions.assign(("b", 0), 5)
    positions.accept([a100, b5, a101])
    for disordered in ([a100, b5, a101], [b5, a100], [a101, a100]):
        with pytest.raises(ValueError, match="not ordered"):
            positions.unwritten(disordered)
        with pytest.raises(ValueError, match="not ordered"):
            partition_spans(disordered)
    assert positions.unwritten([a100, a101, b5]) == [a100, a101, b5]
