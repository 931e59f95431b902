"""The bound the benchmark puts on `durability = replay` (bench/commit_cost.py), and how the report
states it. Pure: the measurement itself runs in `make test`'s benchmark smoke test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.commit_cost import most_replay_saves
from bench.report import ratios, render_markdown

ROOT = Path(__file__).resolve().parents[2]
COMMIT = {
    "rows_per_transaction": 5000,
    "wal_bytes_per_transaction": 2_500_000,
    "fsync_commit_s": 0.004,
    "replay_commit_s": 0.0005,
    "rounds": 7,
}


def test_replay_saves_at_most_the_durable_commit_s_extra_wait_as_a_share_of_a_flush() -> None:
    assert most_replay_saves(COMMIT, 0.14) == 0.025  # 3.5 ms of 140 ms
    assert most_replay_saves({**COMMIT, "replay_commit_s": 0.005}, 0.14) == 0.0  # never negative
    assert most_replay_saves(COMMIT, None) is None and most_replay_saves({}, 0.14) is None


def report(commit: dict[str, Any] | None) -> dict[str, Any]:
    """The committed report of record, with its flush p50 set to 0.14 s and `commit` as its measurement."""
    found: dict[str, Any] = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    found["variants"]["microbatch"]["flush_p50_s"] = 0.14
    found.pop("commit_wait", None)
    if commit is not None:
        found["commit_wait"] = commit
    found["ratios"] = ratios(found)
    return found


def test_the_durability_paragraph_gives_the_commit_s_wait_and_the_bound() -> None:
    text = render_markdown(report(COMMIT))
    assert report(COMMIT)["ratios"]["replay_most_saves"] == 0.025
    assert "4.00 ms with synchronous_commit on and 0.50 ms with it off" in text, text
    assert "at most **2.5%** of a flush" in text and "2.5 MB of WAL" in text
    unmeasured = render_markdown(report(None))  # not measured: nothing claimed about the commit's wait
    assert "All that replay removes" not in unmeasured and "with synchronous_commit on and" not in unmeasured
