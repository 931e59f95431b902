"""Where PostgreSQL's time goes in a flush: the write path's statement under EXPLAIN ANALYZE.

On this write path PostgreSQL spends about twice the consumer's CPU per event, so the consumer's
profile (bench/profile.py) is half of the picture; this is the other half. A fresh database is
filled through the write path itself (`Target.write`, the code a run uses) with every window of the
records but the last `profiled`. Each of those is then COPYed into the session's staging table, its
flush statement run under EXPLAIN (ANALYZE, WAL, FORMAT JSON) and committed, so the tables are as
large as at the end of a run. (The offsets' compare-and-set, one row per partition, is left out, and
so is planning: the writer's connection prepares a statement once it has run five times, psycopg's
default.)

The statement's data-modifying CTEs are Insert nodes: the raw table's (INSERT ... ON CONFLICT DO
NOTHING RETURNING, reading the staging table) and one per summary (an aggregate and a sort of the
rows the raw insert returned, then ON CONFLICT DO UPDATE). Each node's input (its child) is timed
apart from its own writing. The statement counts the raw insert's rows first, so that CTE runs
first and the summaries only read its stored result: each node's time is its own work. EXPLAIN's
per-node timing reads the clock for every row at every node, which adds overhead of its own: read
the shares. COPY and COMMIT are timed by the client.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from bench.ceilings import NoSink, windows
from bench.defaults import WINDOW_RECORDS
from bench.lab import Lab
from pipeline.prepare import Preparer
from pipeline.records import Record
from pipeline.spec_loader import load_pipeline
from pipeline.sqlplan import WritePlan
from pipeline.target import Target

EXPLAIN = sql.SQL("EXPLAIN (ANALYZE, WAL, FORMAT JSON) ")


def inserts(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Each Insert node of an EXPLAIN (ANALYZE, WAL, FORMAT JSON) plan tree, outermost first: its
    table, its own time and its input's (ms, inclusive of the input's children), rows written, WAL bytes,
    the rows that met a conflict and what was done about them (nothing, update)."""
    if plan.get("Node Type") == "ModifyTable" and plan.get("Operation") == "Insert":
        children = plan.get("Plans", [])
        total = float(plan["Actual Total Time"]) * int(plan.get("Actual Loops", 1))
        source = sum(float(child["Actual Total Time"]) * int(child.get("Actual Loops", 1)) for child in children)
        yield {
            "table": plan["Relation Name"],
            "input_ms": source,
            "write_ms": max(0.0, total - source),
            "rows": int(plan["Actual Rows"]),
            "wal_bytes": int(plan.get("WAL Bytes", 0)),
            "conflicts": int(plan.get("Conflicting Tuples", 0)),
            "on_conflict": str(plan.get("Conflict Resolution", "")).lower(),
        }
    for child in plan.get("Plans", []):
        yield from inserts(child)


def summarise(measured: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the measured windows, per step of a flush: ms per window and µs per event."""
    events = [w["events"] for w in measured]

    def step(name: str, values: Sequence[float], **extra: Any) -> dict[str, Any]:
        micros = statistics.median(ms * 1000 / n for ms, n in zip(values, events, strict=True))
        return {"step": name, "ms": round(statistics.median(values), 3), "us_per_event": round(micros, 2), **extra}

    steps = [step("COPY into the staging table", [w["copy_ms"] for w in measured])]
    for i, node in enumerate(measured[0]["inserts"]):
        table, rows = node["table"], statistics.median(w["inserts"][i]["rows"] for w in measured)
        wal = statistics.median(w["inserts"][i]["wal_bytes"] for w in measured)
        conflicts = statistics.median(w["inserts"][i]["conflicts"] for w in measured)
        steps.append(step(f"{table}: its input", [w["inserts"][i]["input_ms"] for w in measured]))
        action = f", on conflict {node['on_conflict']}" if node["on_conflict"] else ""
        steps.append(
            step(
                f"{table}: insert{action}",
                [w["inserts"][i]["write_ms"] for w in measured],
                rows=int(rows),
                conflicts=int(conflicts),
                wal_bytes_per_row=round(wal / rows, 1) if rows else None,
            )
        )
    rest = [max(0.0, w["execution_ms"] - sum(n["input_ms"] + n["write_ms"] for n in w["inserts"])) for w in measured]
    steps += [
        step("rest of the statement (counting its rows)", rest),
        step("COMMIT (durable)", [w["commit_ms"] for w in measured]),
    ]
    total = sum(s["ms"] for s in steps)
    for s in steps:
        s["share"] = round(s["ms"] / total, 3) if total else 0.0
    return {"windows": len(measured), "events_per_window": int(statistics.median(events)), "steps": steps}


def profile_flush(
    lab: Lab, records: list[Record], *, profiled: int = 5, batch_size: int = WINDOW_RECORDS
) -> dict[str, Any]:
    """The write path's steps over the last `profiled` windows of `records` (fewer when `records` hold
    fewer than twice as many): see the module docstring."""
    batches = windows(records, batch_size)
    profiled = min(profiled, len(batches) // 2)  # at least as many windows written before as profiled
    if profiled < 1:
        raise ValueError(f"{len(records):,} records: at least two windows of {batch_size:,} are needed")
    url = lab.fresh_database()
    target = Target(load_pipeline(), url, group="pg-profile")
    target.init_tables()
    preparer = Preparer(target.spec, url)
    try:
        for batch in batches[:-profiled]:
            target.write(batch, preparer.prepare(batch.records), NoSink())
        plan, measured = WritePlan(target.spec), []
        with psycopg.connect(url) as conn:
            conn.execute(plan.create_staging)
            conn.commit()
            for batch in batches[-profiled:]:
                window = _window(conn, plan, preparer.prepare(batch.records).copy_data)
                measured.append({**window, "events": len(batch.records)})
    finally:
        preparer.close()
        target.close()
    warm = sum(len(batch.records) for batch in batches[:-profiled])
    return {"warm_events": warm, **summarise(measured)}


def _window(conn: psycopg.Connection[Any], plan: WritePlan, copy_data: bytes | None) -> dict[str, Any]:
    """One window: COPY, the flush statement under EXPLAIN ANALYZE, COMMIT."""
    if copy_data is None:
        raise RuntimeError("the window's COPY data could not be encoded ahead")
    started = time.perf_counter()
    with conn.cursor().copy(plan.copy_staging) as copy:
        copy.write(copy_data)
    copied = time.perf_counter()
    row = conn.execute(EXPLAIN + plan.flush_all).fetchone()
    explained = time.perf_counter()
    conn.commit()
    committed = time.perf_counter()
    document = row[0] if row else []
    if isinstance(document, str):
        document = json.loads(document)
    result = document[0]
    return {
        "copy_ms": (copied - started) * 1000,
        "execution_ms": float(result["Execution Time"]),
        "commit_ms": (committed - explained) * 1000,
        "inserts": list(inserts(result["Plan"])),
    }


def markdown(profile: dict[str, Any]) -> list[str]:
    """The report's section (empty without a profile); says why when it failed."""
    if not profile:
        return []
    lines = ["## Where PostgreSQL's time goes in a flush", ""]
    if "error" in profile:
        return [*lines, f"The profile failed: {profile['error']}", ""]
    lines += [
        f"The last {profile['windows']} windows of {profile['events_per_window']:,} events of the main dataset, "
        f"after {profile['warm_events']:,} written by the write path: each flush statement under EXPLAIN "
        "ANALYZE, medians per window (bench/pg_profile.py). Per-node timing adds overhead of its own: read the "
        "shares. Wall time, not CPU: the durable COMMIT mostly waits for the disk.",
        "",
        "| step | ms per window | µs per event | share | rows | WAL bytes per row |",
        "|---|---|---|---|---|---|",
    ]
    for s in profile["steps"]:
        rows = (
            f"{s['rows']:,}" + (f" ({s['conflicts']:,} existed)" if s.get("conflicts") else "") if "rows" in s else ""
        )
        wal = "" if s.get("wal_bytes_per_row") is None else f"{s['wal_bytes_per_row']:.0f}"
        lines.append(f"| {s['step']} | {s['ms']:.1f} | {s['us_per_event']:.2f} | {s['share']:.1%} | {rows} | {wal} |")
    return [*lines, ""]
