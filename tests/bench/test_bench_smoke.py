"""The benchmark's quick subset inside `make test`: every variant runs, is correct, and reports figures.

It proves the harness works end to end (own Kafka, own durable PostgreSQL, report files); the figures
of record come from `make bench`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench


def test_bench_smoke_runs_every_variant_and_writes_the_report(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--mode", "smoke", "--no-quix", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    assert {"machine", "versions", "variants", "ratios", "targets"} <= set(report)
    for name in ("microbatch", "pg_ceiling", "kafka_ceiling", "kafka_ceiling_decode", "naive"):
        figures = report["variants"][name]
        assert figures["correct"] is True, (name, figures)
        assert figures["events_per_s"] > 0
    microbatch = report["variants"]["microbatch"]
    assert set(microbatch["cpu_us_per_event"]) == {"consumer", "postgres", "broker"}
    assert microbatch["peak_rss_bytes"] > 0
    assert report["ratios"]["vs_naive"] > 1, "batching must beat one transaction per message"
    assert report["bad_row"]["statements_with_one_bad_row"] <= 30
    assert (tmp_path / "BENCHMARKS.md").read_text().startswith("# Benchmarks")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
