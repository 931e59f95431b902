"""The loop's passes over a window work per run of one partition (pipeline.records: ascending_runs,
ordered_runs, records_bytes; consumer.messages.to_runs) instead of per record. Property: for any
window the loop can build (any interleaving of partitions from consume(), offsets increasing with
gaps, copies delivered again) and any state of the positions (stored, fetch, unknown, released),
each pass gives what the per-record rule gives."""

from __future__ import annotations

from itertools import pairwise

import pytest
from confluent_kafka import KafkaError, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.messages import to_runs
from consumer.pending import Pending
from consumer.positions import Positions
from consumer.window import Trigger, Window, WindowPolicy
from pipeline.records import Record, ascending_runs, headers_of, next_positions, partition_spans, records_bytes

PIDS = [("a", 0), ("a", 1), ("b", 0), ("b", 2)]


@st.composite
def consumed(draw: st.DrawFn) -> list[list[Record]]:
    """consume() batches: each partition's offsets increase (with gaps), now and then going back (a
    redelivery after a seek); partitions interleave."""
    next_offset = {pid: draw(st.integers(0, 50)) for pid in PIDS}
    batches = []
    for _ in range(draw(st.integers(1, 4))):
        batch = []
        for pid in draw(st.lists(st.sampled_from(PIDS), max_size=30)):
            step = draw(st.sampled_from([0, 0, 0, 1, 2, -3]))  # -3: a copy delivered again
            offset = max(0, next_offset[pid] + step)
            next_offset[pid] = offset + 1
            value = draw(st.one_of(st.none(), st.binary(max_size=5)))
            key = draw(st.one_of(st.none(), st.binary(max_size=3)))
            batch.append(Record(pid[0], pid[1], offset, key, value))
        batches.append(batch)
    return batches


def reference_accept(positions: Positions, batch: list[Record]) -> list[Record]:
    """The rule, record by record (what Positions.accept did before it worked per run): an owned,
    known partition's record at or after the fetch position, which then moves past it."""
    kept = []
    for record in batch:
        state = positions._owned.get(record.partition_id)
        if state is None or not state.known or (state.fetch is not None and record.offset < state.fetch):
            continue
        state.fetch = record.offset + 1
        if state.assigned_at is None:
            state.assigned_at = record.offset
        kept.append(record)
    return kept


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
    positions, per_record = Positions(), Positions()
    for pid in PIDS:
        for owner in (positions, per_record):
            owner.assign(pid, None, known=pid != ("b", 2))  # ("b", 2): its position is not known yet
    every = []
    for batch in batches:
        runs = ascending_runs(batch)
        assert [r for _, run in runs for r in run] == batch
        assert all(len({r.partition_id for r in run}) == 1 for _, run in runs)
        assert all(a.offset < b.offset for _, run in runs for a, b in pairwise(run))
        accepted = positions.accept(runs)
        flat = [r for _, run in accepted for r in run]
        assert flat == reference_accept(per_record, batch)
        assert window.extend(accepted) == sum(r.size for r in flat) == records_bytes(flat)
        every += flat
    assert {pid: positions._owned[pid] for pid in PIDS} == {pid: per_record._owned[pid] for pid in PIDS}
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
    positions.accept(ascending_runs([a100, b5, a101]))
    a102 = Record("a", 0, 102, None, b"x")
    with pytest.raises(ValueError, match="do not ascend"):  # and no position moved before it was found
        positions.accept([(("a", 0), [a102]), (("b", 0), [b5, b5])])
    assert positions.accept(ascending_runs([a102])) == [(("a", 0), [a102])]
    for disordered in ([a100, b5, a101], [b5, a100], [a101, a100]):
        with pytest.raises(ValueError, match="not ordered"):
            positions.unwritten(disordered)
        with pytest.raises(ValueError, match="not ordered"):
            partition_spans(disordered)
    assert positions.unwritten([a100, a101, b5]) == [a100, a101, b5]


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(batches=consumed(), errors=st.lists(st.integers(0, 40), max_size=3))
def test_to_runs_cuts_consumed_messages_where_ascending_runs_cuts_their_records(
    batches: list[list[Record]], errors: list[int]
) -> None:
    batch = batches[0]
    messages = [
        Message(topic=r.topic, partition=r.partition, offset=r.offset, key=r.key, value=r.value, headers=None,
                timestamp=(1, 1000 + r.offset))
        for r in batch
    ]  # fmt: skip
    failed = Message(error=KafkaError(KafkaError._PARTITION_EOF))
    for at in sorted(errors, reverse=True):  # errors are left out of the runs and do not cut them
        messages.insert(min(at, len(messages)), failed)
    runs, refused = to_runs(messages)
    # Headers stay in the message until a dead letter reads them (headers_of): compared once read.
    read = [(pid, [r._replace(headers=headers_of(r) or ()) for r in run]) for pid, run in runs]
    assert read == ascending_runs([r._replace(timestamp_ms=1000 + r.offset) for r in batch])
    assert [error for _, error in refused] == [failed.error()] * len(errors)


def test_headers_are_read_from_the_message_when_needed_as_the_client_hands_them_out() -> None:
    pairs: list[tuple[str, str | bytes | None]] = [("trace-id", b"\x00\xff"), ("empty", None), ("trace-id", b"again")]
    with_headers = Message(topic="t", partition=0, offset=1, value=b"v", headers=pairs)
    without = Message(topic="t", partition=0, offset=2, value=b"v", headers=None)
    [(_, [first, second])], _ = to_runs([with_headers, without])
    assert headers_of(first) == tuple(pairs) and headers_of(second) == ()
    assert headers_of(Record("t", 0, 3, None, b"v", (("a", b"1"), ("b", None)))) == (("a", b"1"), ("b", None))


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(batches=consumed(), steps=st.lists(st.sampled_from(["window", "add", "give_back", "drop", "take"]), max_size=12))
def test_pending_keeps_the_bytes_of_its_records(batches: list[list[Record]], steps: list[str]) -> None:
    # The flush's batch_bytes metric comes from this count, not from a pass over the records.
    pending = Pending()
    window = Window(WindowPolicy(max_records=10**6, max_bytes=10**9, max_wait_ms=10**6), lambda: 0.0)
    taken: list[Record] = []
    for n, step in enumerate(steps):
        batch = sorted(batches[n % len(batches)], key=lambda r: (r.topic, r.partition, r.offset))
        if step == "window":
            window.extend(ascending_runs(batch))
            pending.add_window(window, Trigger.RECORDS)
            assert len(window) == 0 and window.bytes == 0
        elif step == "add":
            pending.add(batch, Trigger.TIME)
        elif step == "give_back":
            pending.give_back(taken, Trigger.TIME)
        elif step == "drop":
            pending.drop([PIDS[n % len(PIDS)]])
        else:
            taken, _ = pending.take()
        assert pending.bytes == records_bytes(pending.records)
