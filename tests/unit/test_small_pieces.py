"""Positions bookkeeping, backoff, secret masking and the workload's expected totals."""

from __future__ import annotations

import gc
import logging
from decimal import Decimal

import orjson

from consumer import collector
from consumer.backoff import Backoff
from consumer.logs import JsonFormatter, MaskingFormatter, mask_secrets
from consumer.positions import Positions
from consumer.workload import BAD_KINDS, InvoiceWorkload, WorkloadOptions
from pipeline.decode import Decoder
from pipeline.records import Batch, Record, ascending_runs, next_positions, partition_spans
from pipeline.spec_loader import load_pipeline


def rec(offset: int, partition: int = 0) -> Record:
    return Record("t", partition, offset, None, b"{}")


def accepted(positions: Positions, records: list[Record]) -> list[Record]:
    """What `Positions.accept` keeps of a consume() batch, as records."""
    return [record for _, run in positions.accept(ascending_runs(records)) for record in run]


def test_positions_drop_stale_and_unknown_records() -> None:
    owned = Positions()
    owned.assign(("t", 0), 10)
    owned.assign(("t", 1), None, known=False)
    assert accepted(owned, [rec(9)]) == []  # before the stored position
    assert accepted(owned, [rec(10)]) == [rec(10)]
    assert accepted(owned, [rec(10)]) == []  # a re-delivered copy
    assert accepted(owned, [rec(12)]) == [rec(12)]  # gaps are allowed (compaction, transaction markers)
    assert accepted(owned, [rec(0, partition=1)]) == []  # position unknown yet
    assert accepted(owned, [rec(0, partition=7)]) == []  # not ours
    assert owned.unknown() == [("t", 1)]
    owned.sought(("t", 1), 5, fetch=5)
    assert accepted(owned, [rec(5, partition=1)]) == [rec(5, partition=1)] and owned.unknown() == []


def test_positions_track_commits_and_release() -> None:
    owned = Positions()
    owned.assign(("t", 0), None)
    owned.committed({("t", 0): 42, ("t", 9): 1})
    assert owned.stored(("t", 0)) == 42 and owned.stored(("t", 9)) is None
    assert owned.release([("t", 0), ("t", 3)]) == [("t", 0)]
    assert len(owned) == 0


def test_unwritten_keeps_what_lies_between_the_stored_and_the_fetch_position() -> None:
    owned = Positions()
    owned.assign(("t", 0), 10)
    buffered = accepted(owned, [rec(n) for n in range(10, 20)])
    assert owned.unwritten(buffered) == buffered
    owned.committed({("t", 0): 15})
    assert owned.unwritten(buffered) == buffered[5:]  # written meanwhile
    batch = owned.batch(owned.unwritten(buffered))
    assert (batch.from_positions, batch.to_positions) == ({("t", 0): 15}, {("t", 0): 20})
    owned.forget([("t", 0)])
    assert owned.unwritten(buffered) == []  # position unknown: nothing is trusted
    owned.sought(("t", 0), 15, fetch=15)
    assert owned.unwritten(buffered) == [], "a seek back to 15 delivers 15.. again: the old copies are stale"


def test_backoff_grows_jittered_and_bounded() -> None:
    backoff = Backoff(0.2, 5.0, uniform=lambda low, high: high)
    delays = [backoff.next_delay() for _ in range(8)]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next_delay() == 0.2
    low = Backoff(0.2, 5.0, uniform=lambda low, high: low)
    assert all(low.next_delay() == 0.1 for _ in range(5))


def test_secrets_are_masked() -> None:
    assert mask_secrets("postgresql://user:hunter2@db:5432/x") == "postgresql://user:***@db:5432/x"
    assert mask_secrets("password=hunter2 host=db") == "password=*** host=db"
    assert mask_secrets("sasl.password: abc token=xyz") == "sasl.password: *** token=***"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "dsn %s", ("postgresql://u:pw@h/d",), None)
    assert "pw@" not in MaskingFormatter("%(message)s").format(record)
    assert "pw@" not in JsonFormatter().format(record)
    assert orjson.loads(JsonFormatter().format(record))["level"] == "INFO"


def test_workload_is_reproducible_and_its_totals_match_what_the_decoder_accepts() -> None:
    options = WorkloadOptions(count=3000, seed=42, bad_ratio=0.05, duplicate_ratio=0.02, items=50)
    first = InvoiceWorkload(options)
    messages = list(first.messages())
    again = [m.value for m in InvoiceWorkload(options).messages()]
    assert [m.value for m in messages] == again
    totals = first.totals
    assert totals.messages == 3000 and totals.duplicates > 0 and totals.bad > 0
    assert totals.good + totals.duplicates + totals.bad == 3000

    decoder = Decoder(load_pipeline())
    out = decoder.decode([Record("t", 0, i, m.key, m.value) for i, m in enumerate(messages)])
    assert len(out.rows) == totals.good + totals.duplicates
    reasons: dict[str, int] = {}
    for rejection in out.rejections:
        reasons[rejection.reason.value] = reasons.get(rejection.reason.value, 0) + 1
    assert reasons == dict(totals.bad_by_reason)
    assert {kind for kind, _ in BAD_KINDS} >= {m.kind for m in messages if not m.good}
    # The revenue the database will compute from the decoded rows equals the expected totals.
    unique = {row[1]: row for row in out.rows}
    revenue = sum((row[5] * Decimal(row[6]) for row in unique.values()), Decimal(0))
    assert revenue == sum((v["revenue"] for v in totals.daily.values()), Decimal(0))


def test_batch_positions_are_one_past_the_last_offset() -> None:
    records = [rec(3), rec(4), rec(7, 1)]
    assert next_positions(records) == {("t", 0): 5, ("t", 1): 8}
    batch = Batch(records, {("t", 0): 3, ("t", 1): None})
    assert batch.to_positions == {("t", 0): 5, ("t", 1): 8}


def test_partition_spans_give_first_offsets_and_the_same_positions() -> None:
    records = [rec(3), rec(4), rec(9), rec(7, 1), rec(0, 2), rec(1, 2)]
    spans = partition_spans(records)
    assert spans == {("t", 0): (3, 10), ("t", 1): (7, 8), ("t", 2): (0, 2)}
    assert {pid: end for pid, (_, end) in spans.items()} == next_positions(records)
    assert partition_spans([]) == {}


def test_accept_a_batch_matches_accepting_one_by_one() -> None:
    batch = [rec(9), rec(10), rec(10), rec(12), rec(0, partition=1), rec(5, partition=7)]
    one_by_one, whole = Positions(), Positions()
    for owned in (one_by_one, whole):
        owned.assign(("t", 0), 10)
        owned.assign(("t", 1), None, known=False)
    assert accepted(whole, batch) == [r for r in batch if accepted(one_by_one, [r])]
    assert whole.assigned_at(("t", 0)) == 10


def test_the_collector_is_settled_once_with_startup_frozen() -> None:
    collector._settled = False
    before = gc.get_threshold()
    try:
        collector.settle()
        assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, *collector.OLDER_THRESHOLDS)
        assert gc.get_freeze_count() > 0
        gc.set_threshold(700, 10, 10)
        collector.settle()  # a second loop in the same process changes nothing
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)
