"""grafana/dashboards/microbatch.json: a data-source variable instead of a hard-coded uid; job, pipeline
and instance variables that every query follows; one unit per panel that fits what it shows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "microbatch.json"
SELECTOR = re.compile(r"\b((?:microbatch|process)_[a-z_]+|up)\b(\{[^}]*\})?")
FILTERS = ('job=~"$job"', 'instance=~"$instance"')


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return list(dashboard()["panels"])


def test_the_data_source_is_a_variable_not_a_hard_coded_uid() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    uids = {p["datasource"]["uid"] for p in panels()} | {t["datasource"]["uid"] for p in panels() for t in p["targets"]}
    uids |= {v["datasource"]["uid"] for v in variables.values() if "datasource" in v}
    assert uids == {"${datasource}"}


def test_job_pipeline_and_instance_variables_chain() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert {"job", "pipeline", "instance"} <= set(variables)
    assert variables["job"]["current"]["value"] == "microbatch"
    assert "$job" in variables["pipeline"]["definition"]
    assert "$job" in variables["instance"]["definition"] and "$pipeline" in variables["instance"]["definition"]
    assert variables["pipeline"]["includeAll"] and variables["pipeline"]["allValue"] == ".*"
    # No allValue: "All" instances are the listed ones, those of the chosen pipelines, not every instance.
    assert variables["instance"]["includeAll"] and "allValue" not in variables["instance"]


def test_every_series_of_every_panel_follows_the_job_and_instance_variables() -> None:
    unfiltered = []
    for panel in panels():
        for target in panel["targets"]:
            for name, labels in SELECTOR.findall(target["expr"]):
                if not labels or not all(f in labels for f in FILTERS):
                    unfiltered.append(f"{panel['title']}: {name}{labels}")
    assert unfiltered == []


def test_each_panel_has_one_unit_that_fits_all_its_series() -> None:
    for panel in panels():
        unit = panel["fieldConfig"]["defaults"]["unit"]
        names = {name for target in panel["targets"] for name, _ in SELECTOR.findall(target["expr"])}
        in_bytes = {name for name in names if re.search(r"_bytes(_sum|_count|_bucket)?$", name)}
        assert in_bytes in (set(), names), f"{panel['title']}: bytes and other quantities on one axis"
        assert (unit == "bytes") == bool(in_bytes), f"{panel['title']}: unit {unit}"
        if "partitions" in panel["title"].lower():
            assert unit in ("none", "short")


def test_last_flush_age_is_only_shown_once_a_flush_happened() -> None:
    (panel,) = [p for p in panels() if "last successful flush" in p["title"]]
    (target,) = panel["targets"]
    assert re.search(r"microbatch_last_flush_timestamp_seconds\{[^}]*\} > 0\)", target["expr"]), target["expr"]


def test_lag_in_seconds_and_flush_outcomes_are_shown() -> None:
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in panels()}
    (lag,) = [p for p in panels() if any("microbatch_lag_seconds" in t["expr"] for t in p["targets"])]
    assert lag["fieldConfig"]["defaults"]["unit"] == "s"
    flush = next(e for title, e in exprs.items() if "microbatch_flush_duration_seconds_bucket" in " ".join(e))
    assert any('outcome=~"ok|bisected"' in e for e in flush) and any('outcome="failed"' in e for e in flush)


def test_panels_do_not_overlap_and_ids_are_unique() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels():
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
