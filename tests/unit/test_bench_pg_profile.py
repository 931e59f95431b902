"""How the benchmark reads PostgreSQL's side of a flush from EXPLAIN ANALYZE (bench/pg_profile.py).
Pure: the measurement itself runs in `make test`'s benchmark smoke test."""

from __future__ import annotations

from typing import Any

import pytest

from bench.pg_profile import inserts, markdown, summarise


def insert(
    table: str, total: float, rows: int, child: float, *, conflict: str = "", conflicts: int = 0
) -> dict[str, Any]:
    node: dict[str, Any] = {
        "Node Type": "ModifyTable", "Operation": "Insert", "Relation Name": table, "Actual Total Time": total,
        "Actual Loops": 1, "Actual Rows": rows, "WAL Bytes": rows * 100,
        "Plans": [{"Node Type": "Sort", "Actual Total Time": child, "Actual Loops": 1}],
    }  # fmt: skip
    if conflict:
        node |= {"Conflict Resolution": conflict.upper(), "Conflicting Tuples": conflicts}
    return node


def plan(raw_ms: float) -> dict[str, Any]:
    """The shape of a flush statement's plan in PostgreSQL 15: a Result whose InitPlans are the CTEs (each an
    Insert node) and the counts of their rows (an Aggregate over a CTE Scan)."""
    count = {"Node Type": "Aggregate", "Plans": [{"Node Type": "CTE Scan", "Actual Total Time": 0.2}]}
    return {
        "Node Type": "Result",
        "Actual Total Time": 99.0,
        "Plans": [
            insert("raw", raw_ms, 900, 4.0, conflict="nothing", conflicts=3),
            insert("daily", 30.0, 800, 10.0, conflict="update", conflicts=790),
            count,
            count,
        ],
    }  # fmt: skip


def test_each_insert_node_is_found_with_its_own_time_apart_from_its_input() -> None:
    found = list(inserts(plan(40.0)))
    assert [node["table"] for node in found] == ["raw", "daily"]
    raw, daily = found
    assert (raw["input_ms"], raw["write_ms"], raw["rows"]) == (4.0, 36.0, 900)
    assert (raw["conflicts"], raw["on_conflict"]) == (3, "nothing")
    assert (daily["input_ms"], daily["write_ms"], daily["wal_bytes"], daily["on_conflict"]) == (
        10,
        20,
        80_000,
        "update",
    )


def window(raw_ms: float, events: int) -> dict[str, Any]:
    return {"copy_ms": 5.0, "execution_ms": 75.0, "commit_ms": 2.0, "events": events,
            "inserts": list(inserts(plan(raw_ms)))}  # fmt: skip


def test_the_summary_takes_medians_per_step_and_its_shares_add_up() -> None:
    profile = summarise([window(40.0, 1000), window(50.0, 1000), window(60.0, 500)])
    steps = {step["step"]: step for step in profile["steps"]}
    raw = steps["raw: insert, on conflict nothing"]
    assert raw["ms"] == 46.0 and raw["us_per_event"] == 46.0  # medians: 36/46/56 ms; 36/46/112 µs per event
    assert raw["wal_bytes_per_row"] == 100.0 and raw["rows"] == 900
    assert steps["daily: its input"]["ms"] == 10.0
    # 75 ms of execution, of which the two nodes account for 40..60 + 30: the rest is never negative
    assert steps["rest of the statement (counting its rows)"]["ms"] == 0.0
    assert sum(step["share"] for step in profile["steps"]) == pytest.approx(1.0, abs=0.01)
    assert profile["windows"] == 3 and profile["events_per_window"] == 1000


def test_the_report_section_lists_every_step_or_says_why_there_is_none() -> None:
    profile = {"warm_events": 10_000, **summarise([window(40.0, 1000)])}
    text = "\n".join(markdown(profile))
    assert "## Where PostgreSQL's time goes in a flush" in text
    assert "| raw: insert, on conflict nothing | 36.0 | 36.00 |" in text and "(3 existed)" in text
    assert "The profile failed: RuntimeError: no" in "\n".join(markdown({"error": "RuntimeError: no"}))
    assert markdown({}) == []
