"""The fault-injection report of record cannot go stale: it names its commit, the README repeats it,
and nothing it vouches for (VOUCHED_FOR: the product, the scenarios and their oracle, the services,
the locked dependencies) changed since that commit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.chaos_report import README_BLOCK, markdown, summary

ROOT = Path(__file__).resolve().parents[2]
REPORT = json.loads((ROOT / "chaos-report.json").read_text())
# What a report's verdicts depend on: the product, and the scenarios, their oracle and harness (a changed
# check vouches for nothing until it has run), the services they run against, the locked dependencies.
VOUCHED_FOR = ("consumer", "pipeline", "tests/chaos", "tests/support", "devstack", "uv.lock")


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)


def test_the_report_is_a_full_run_on_a_clean_commit_and_every_scenario_passed() -> None:
    assert REPORT["mode"] == "full"
    assert len(REPORT.get("commit", "")) == 40
    assert REPORT["dirty"] is False, "the report was produced on a tree with uncommitted changes"
    failed = [row["scenario"] for row in REPORT["scenarios"] if row["outcome"] != "passed"]
    assert failed == []
    for row in REPORT["scenarios"]:
        assert row["live_faults"] == row["faults"] > 0, row
        assert row["recovery_s"] is not None and row["recovery_s"] <= row["recovery_bound_s"], row
        assert (row["lost"], row["duplicated"], row["aggregate_mismatches"]) == (0, 0, 0), row
        assert row.get("reference_mismatches", 0) == 0, row  # lookups: no key created twice (reports since T1L)


def test_the_readme_and_the_markdown_say_what_the_json_says() -> None:
    block = README_BLOCK.search((ROOT / "README.md").read_text())
    assert block is not None, "README.md lacks the <!-- chaos:begin --> block"
    assert block.group(2) == summary(REPORT)
    assert (ROOT / "chaos-report.md").read_text() == markdown(REPORT)


def test_nothing_the_report_vouches_for_changed_since_its_commit() -> None:
    if git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.skip("a shallow clone does not hold the report's commit")
    commit = REPORT["commit"]
    assert git("merge-base", "--is-ancestor", commit, "HEAD").returncode == 0, (
        f"the report's commit {commit[:12]} is not in this branch's history: run `make chaos` again"
    )
    changed = git("diff", "--name-only", commit, "HEAD", "--", *VOUCHED_FOR).stdout.split()
    assert changed == [], f"changed since the report's commit {commit[:12]}: {changed}; run `make chaos` again"
