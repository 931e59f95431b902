"""Which runs of a benchmark report were right: a figure counts only from a run whose tables were
checked and found right, and `make bench` fails unless every checked run was."""

from __future__ import annotations

from typing import Any


def if_correct(figures: dict[str, Any]) -> dict[str, Any]:
    """`figures` when their run's tables were right, else nothing (its figures count toward no target)."""
    return figures if figures.get("correct") else {}


def runs_correct(report: dict[str, Any]) -> dict[str, bool]:
    """Every run of the report that verifies its tables, by name, and whether it was right: the
    variants, the window grid, steady mode and the memory drain (`make bench` fails unless all were)."""
    runs = {f"variant {name}": figures for name, figures in report["variants"].items()}
    runs |= {f"grid {name}": figures for name, figures in report.get("grid", {}).items()}
    runs |= {f"steady {name}": figures for name, figures in report.get("steady", {}).items()}
    if "rss_drain" in report:
        runs["memory drain"] = report["rss_drain"]
    return {name: bool(figures.get("correct", False)) for name, figures in runs.items()}
