"""The benchmark's quick subset inside `make test`: every variant runs, reports figures, and writes
exactly what it must; but the ones that need an environment of their own (quixstreams' venv, the Kafka
Connect JVM, the baseline consumer's worktree: `make bench-quick` runs those).

It proves the harness works end to end (own Kafka, own durable PostgreSQL, report files); the figures
of record come from `make bench`. Correctness is checked here, not taken from the harness: the run
exports (`--export`) the ledger of every message the broker acknowledged and each table-writing
variant's final tables, and tests.support.bench_export (the lookups variant's vendor-invoice tables:
tests.support.bench_vendor_export) judges the messages itself and compares every row, every summary
total and, for the lookups, every reference row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bench_export import check_variant, good_events, ledger
from tests.support.bench_vendor_export import check_vendor_variant

pytestmark = pytest.mark.bench

# Exported in every mode.
TABLE_WRITERS = {
    "microbatch", "microbatch_replay", "microbatch_secure", "microbatch_same_items", "microbatch_lookups", "pg_ceiling",
    "raw_ingest", "naive",
}  # fmt: skip
FROM_MEMORY = {"pg_ceiling", "raw_ingest"}  # write records regenerated in memory, not read from Kafka
LOOKUPS = "microbatch_lookups"  # the vendor-invoices pipeline: its tables are keyed by the ids its lookups assign
KAFKA_CEILINGS = ("kafka_ceiling", "kafka_ceiling_decode")  # read the main dataset, write nothing
MAIN_DATASET = "main"


def _base(directory: Path) -> str:
    """The variant an export directory belongs to ('naive-2' → 'naive': a later repetition)."""
    name, _, repetition = directory.name.rpartition("-")
    return name if name and repetition.isdigit() else directory.name


def test_bench_smoke_runs_every_variant_and_writes_the_report(tmp_path: Path) -> None:
    out, export = tmp_path / "out", tmp_path / "export"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--mode", "smoke", "--no-quix", "--out", str(out), "--export", str(export)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "latest.json").read_text())
    assert {"source", "machine", "versions", "variants", "ratios", "targets"} <= set(report)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert report["source"]["commit"] == head  # the report names the commit it ran on
    for name in (
        "microbatch",
        "microbatch_replay",
        "microbatch_secure",
        "microbatch_lookups",
        "microbatch_same_items",
        "pg_ceiling",
        "raw_ingest",
        "kafka_ceiling",
        "kafka_ceiling_decode",
        "naive",
    ):
        figures = report["variants"][name]
        assert figures["events_per_s"] > 0, (name, figures)
        assert figures["correct"] is True, (name, figures)  # the harness's own verdict: secondary
    assert "microbatch_baseline" not in report["variants"]  # smoke mode never builds the baseline's worktree
    lookups = report["variants"]["microbatch_lookups"]  # 95% of its pairs exist before the run, 5% are created
    assert lookups["items_before"] + lookups["pairs_created_in_run"] == lookups["pairs"] > 0, lookups
    assert report["ratios"]["lookups_vs_plain"] > 0
    assert report["ratios"]["lookups_vs_same_items"] > 0
    assert report["ratios"]["secure_vs_plain"] > 0
    microbatch = report["variants"]["microbatch"]
    assert set(microbatch["cpu_us_per_event"]) == {"consumer", "postgres", "broker"}
    assert microbatch["peak_rss_bytes"] > 0
    assert report["ratios"]["vs_naive"] > 1, "batching must beat one transaction per message"
    assert report["variants"]["naive"]["wal_bytes_per_event"] > 0
    assert report["bad_row"]["statements_with_one_bad_row"] <= 30
    profile = report["profile"]  # where the consumer's CPU goes: py-spy over one more drain, by stage
    assert profile.get("run", {}).get("correct") is True and profile["samples"] > 0, profile
    stages = profile["stages"]
    assert stages["field checks"]["share"] + stages["JSON and decode loop"]["share"] > 0, stages
    assert sum(stage["share"] for stage in stages.values()) == pytest.approx(1.0, abs=0.01)
    assert (out / "BENCHMARKS.md").read_text().startswith("# Benchmarks")
    assert f"on commit `{head[:12]}`" in (out / "BENCHMARKS.md").read_text()
    assert "## Where the consumer's CPU goes" in (out / "BENCHMARKS.md").read_text()
    pg = report["pg_profile"]  # PostgreSQL's side of a flush: EXPLAIN ANALYZE of the last windows' statements
    steps = {step["step"]: step for step in pg.get("steps", [])}
    raw_insert = steps.get("transactions: insert, on conflict nothing", {})
    assert 0 < raw_insert.get("rows", 0) <= pg["events_per_window"] and raw_insert["wal_bytes_per_row"] > 0, pg
    assert {"inventory: insert, on conflict update", "item_sales_daily: insert, on conflict update"} <= set(steps), pg
    assert "## Where PostgreSQL's time goes in a flush" in (out / "BENCHMARKS.md").read_text()
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The test's own check, from the ledgers and the exported tables.
    acknowledged = ledger(export, MAIN_DATASET)
    assert len(acknowledged) == report["settings"]["events"]
    for name in KAFKA_CEILINGS:
        assert report["variants"][name]["events"] == len(acknowledged), name
    raw = report["variants"]["raw_ingest"]  # the same records as pg_ceiling's (checked below), raw rows only
    assert (raw["rows"], raw["quantity"]) == good_events(acknowledged), raw
    assert report["ratios"]["replay_vs_fsync"] > 0 and report["ratios"]["vs_raw_ingest"] > 0
    commit = report["commit_wait"]  # what a durable COMMIT waits for: the most replay can save
    assert commit["wal_bytes_per_transaction"] > 0 and commit["fsync_commit_s"] > 0 and commit["replay_commit_s"] > 0
    assert report["ratios"]["replay_most_saves"] is not None
    assert "All that replay removes is the durable COMMIT's wait" in (out / "BENCHMARKS.md").read_text()
    exported = sorted(path for path in export.iterdir() if (path / "dataset.txt").exists())
    assert {_base(path) for path in exported} >= TABLE_WRITERS, [path.name for path in export.iterdir()]
    for directory in exported:
        variant = _base(directory)
        if variant == LOOKUPS:
            assert not (problems := check_vendor_variant(export, directory)), (directory.name, problems)
            continue
        problems = check_variant(
            export,
            directory,
            complete=variant != "naive",  # naive is time-bounded: it writes a prefix of its topic
            from_memory=variant in FROM_MEMORY,
            summaries=variant != "raw_ingest",  # raw rows only: its summaries must stay empty
        )
        assert not problems, (directory.name, problems)
