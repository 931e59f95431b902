"""The bench smoke test's own checker (tests/support/bench_export.py) can fail: a raw-only variant
(raw_ingest) must leave the summaries empty, and a variant with summaries must fill them."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.support.bench_export import Tables, check_export


def test_a_raw_only_variant_with_summary_rows_is_a_problem() -> None:
    tables = Tables(rows=[], inventory={"item-00001": (3, datetime(2026, 1, 1, tzinfo=UTC))}, daily={})
    problems = check_export(tables, [], complete=True, summaries=False)
    assert any(problem.startswith("inventory: 1 of 1 rows differ") for problem in problems), problems


def test_a_raw_only_variant_with_empty_summaries_has_no_summary_problem() -> None:
    problems = check_export(Tables(rows=[], inventory={}, daily={}), [], complete=True, summaries=False)
    assert problems == ["the ledger holds no good message"]
