"""The fault-injection report: one row per scenario, written from the test's outcome (never before its
assertions), naming the commit it ran on. `make chaos` writes chaos-report.json, chaos-report.md and
the summary block of README.md."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.chaos import FULL, RECOVERY_BOUND_S, Scenario

ROOT = Path(__file__).resolve().parents[2]
README_BLOCK = re.compile(r"(<!-- chaos:begin -->\n)(.*?)(<!-- chaos:end -->)", re.S)


@dataclass
class Row:
    scenario: str
    outcome: str
    faults: int
    live_faults: int
    events: int
    good: int
    bad: int
    lost: int
    duplicated: int
    aggregate_mismatches: int
    positions_ok: bool
    dead_letters: int
    dead_letters_exact: bool
    dead_letter_duplicates: int
    dead_letters_missing: int
    recovery_s: float | None
    recovery_bound_s: float
    recovery_from: str
    seconds: float
    notes: str = ""
    reference_mismatches: int = 0  # lookups: reference rows created twice, orphaned or missing (T1L)


def row_of(scenario: Scenario, outcome: str, seconds: float) -> Row:
    verdict = scenario.verdict
    return Row(
        scenario=scenario.name,
        outcome=outcome,
        faults=scenario.faults,
        live_faults=scenario.live_faults,
        events=verdict.events if verdict else 0,
        good=verdict.good if verdict else 0,
        bad=verdict.bad if verdict else 0,
        lost=verdict.lost if verdict else -1,
        duplicated=verdict.duplicated if verdict else -1,
        aggregate_mismatches=verdict.aggregate_mismatches if verdict else -1,
        positions_ok=verdict.positions_ok if verdict else False,
        dead_letters=verdict.dead_letters if verdict else 0,
        dead_letters_exact=verdict.dead_letters_exact if verdict else False,
        dead_letter_duplicates=verdict.dead_letter_duplicates if verdict else 0,
        dead_letters_missing=verdict.dead_letters_missing if verdict else 0,
        recovery_s=None if scenario.recovery_s is None else round(scenario.recovery_s, 1),
        recovery_bound_s=scenario.bound_s,
        recovery_from=scenario.recovery_from,
        seconds=round(seconds, 1),
        notes="; ".join(scenario.notes),
        reference_mismatches=verdict.reference_mismatches if verdict else -1,
    )


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """The commit the tests run on, and whether tracked files differ from it."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"commit": commit or "unknown", "dirty": dirty}


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    git: dict[str, Any] = field(default_factory=git_state)

    def add(self, scenario: Scenario, outcome: str, seconds: float) -> None:
        self.rows.append(row_of(scenario, outcome, seconds))

    def document(self) -> dict[str, Any]:
        return {
            "mode": "full" if FULL else "quick",
            "commit": self.git["commit"],
            "dirty": self.git["dirty"],
            "generated_at": self.started_at.isoformat(timespec="seconds"),
            "recovery_bound_s": RECOVERY_BOUND_S,
            "scenarios": [asdict(row) for row in self.rows],
        }

    def write(self, directory: Path) -> None:
        document = self.document()
        (directory / "chaos-report.json").write_text(json.dumps(document, indent=2) + "\n")
        (directory / "chaos-report.md").write_text(markdown(document))
        readme = directory / "README.md"
        if readme.exists():
            readme.write_text(
                README_BLOCK.sub(lambda m: m.group(1) + summary(document) + m.group(3), readme.read_text())
            )


def summary(document: dict[str, Any]) -> str:
    """The README's lines about the report of record (kept equal to chaos-report.json by a test)."""
    rows = document["scenarios"]
    passed = sum(1 for row in rows if row["outcome"] == "passed")
    lost = sum(max(0, row["lost"]) for row in rows)
    duplicated = sum(max(0, row["duplicated"]) for row in rows)
    # A scenario that ended before its verdict (a fixture failed, a skip) has -1 there: no figure at all.
    unjudged = sum(1 for row in rows if row["lost"] < 0 or row["duplicated"] < 0)
    faults, live = sum(row["faults"] for row in rows), sum(row["live_faults"] for row in rows)
    tree = "a tree with uncommitted changes" if document["dirty"] else "a clean tree"
    return (
        f"Report of record: {document['mode']} mode, commit `{document['commit'][:12]}` ({tree}), "
        f"{document['generated_at']}: {len(rows)} scenarios, {passed} passed, {lost} lost, {duplicated} duplicated"
        f"{f' ({unjudged} scenarios without a verdict)' if unjudged else ''}, "
        f"{faults} faults of which {live} hit live work.\n"
    )


_RESULT = {"passed": "pass", "skipped": "SKIPPED"}  # any other outcome: FAIL


def markdown(document: dict[str, Any]) -> str:
    lines = [
        f"# Fault-injection report ({document['mode']} mode)",
        "",
        f"Commit `{document['commit']}`{' (with uncommitted changes)' if document['dirty'] else ''}, "
        f"run started {document['generated_at']}. Generated by `make chaos` (tests/chaos) from each",
        "scenario's outcome, after its assertions. Each scenario runs a stream of invoice events (T1L:",
        "vendor-invoice events, whose lookups find or create items and vendors) with",
        "invalid messages, producer duplicates and headers through real `microbatch run` processes against",
        "real Kafka and PostgreSQL, injects its faults while the consumer has work in hand (a fault that",
        "finds the consumer idle does not count as live), lets it catch up, and checks the oracle",
        "(docs/RELIABILITY.md) against the producer's ledger: every good event written once with its exact",
        "payload and counted once in every summary, every bad one dead-lettered with its reason, key, value",
        "and headers, every stored position at its high watermark. Recovery is measured from the end of",
        "the last fault (or from the operator's repair, for scenarios that halt by design) until",
        "everything acknowledged by then is written.",
        "",
        "| scenario | result | faults (live) | events | lost | duplicated | aggregate mismatches | positions "
        "| dead letters (exact, extra copies, missing) | recovery (s) / bound | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in document["scenarios"]:
        recovery = "—" if row["recovery_s"] is None else f"{row['recovery_s']} / {row['recovery_bound_s']:.0f}"
        lines.append(
            f"| {row['scenario']} | {_RESULT.get(row['outcome'], 'FAIL')} | "
            f"{row['faults']} ({row['live_faults']}) | {row['events']} | {row['lost']} | {row['duplicated']} | "
            f"{row['aggregate_mismatches']} | {'= high watermark' if row['positions_ok'] else 'DIFFER'} | "
            f"{row['dead_letters']} ({'exact' if row['dead_letters_exact'] else 'NOT EXACT'}, "
            f"{row['dead_letter_duplicates']}, {row['dead_letters_missing']}) | {recovery} (from "
            f"{row['recovery_from']}) | {row['notes']} |"
        )
    return "\n".join(lines) + "\n"
