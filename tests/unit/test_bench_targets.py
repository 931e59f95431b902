"""The benchmark's targets are judged on ratios to 3 decimals: a ratio just under a target is not met
because it rounds up to it at 2."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from bench import ceilings, pg_profile, variants
from bench.__main__ import paired_consumer_cpu
from bench.defaults import window_settings
from bench.report import ceiling_gap_note, ratios, render_markdown, targets
from bench.verdicts import runs_correct
from consumer.window import LIMITS


def report(microbatch: float, ceiling: float) -> dict[str, Any]:
    found: dict[str, Any] = {
        "variants": {"microbatch": {"events_per_s": microbatch}, "pg_ceiling": {"events_per_s": ceiling}}
    }
    found["ratios"] = ratios(found)
    return found


def met(found: dict[str, Any]) -> bool | None:
    row = next(t for t in targets(found) if "our write path's ceiling" in t["target"])
    verdict: bool | None = row["met"]
    return verdict


def test_a_share_of_the_ceiling_just_under_the_target_is_not_met() -> None:
    under = report(64_982, 72_590)  # 0.8952: 0.90 at 2 decimals
    assert under["ratios"]["vs_pg_ceiling"] == 0.895
    assert met(under) is False
    assert met(report(65_400, 72_590)) is True  # 0.901


def test_the_gap_to_the_ceiling_is_split_into_the_flush_and_the_time_between_flushes() -> None:
    found = report(50_000, 62_500)  # 100 ms and 80 ms per window of 5,000
    found["variants"]["microbatch"]["flush_p50_s"] = 0.095
    (note, _) = ceiling_gap_note(found, window=5_000)
    assert "100.0 ms in microbatch, 80.0 ms in the ceiling" in note
    assert "15.0 ms of the 20.0 ms between them is in the flush itself" in note
    assert "5.0 ms is between flushes" in note


def test_no_gap_note_without_a_flush_duration() -> None:
    assert ceiling_gap_note(report(50_000, 62_500)) == []


def test_no_split_when_microbatch_is_not_slower_or_its_flush_is_outside_the_gap() -> None:
    faster = report(62_500, 50_000)  # 80 ms against the ceiling's 100 ms
    faster["variants"]["microbatch"]["flush_p50_s"] = 0.075
    expected = "Per window of 5,000 events: 80.0 ms in microbatch, 100.0 ms in the ceiling."
    assert ceiling_gap_note(faster, window=5_000)[0] == expected
    quick_flush = report(50_000, 62_500)
    quick_flush["variants"]["microbatch"]["flush_p50_s"] = 0.070  # under the ceiling's 80 ms
    assert "in the flush itself" not in ceiling_gap_note(quick_flush, window=5_000)[0]


def cpu_report(now: list[float], before: list[float], *, paired: bool = False) -> dict[str, Any]:
    found: dict[str, Any] = {
        "variants": {
            "microbatch": {"events_per_s": 60_000, "runs_consumer_cpu_us": now},
            "microbatch_baseline": {"events_per_s": 45_000, "runs_consumer_cpu_us": before},
        }
    }
    if paired:
        found["variants"]["microbatch_baseline"]["paired_consumer_cpu_us"] = paired_consumer_cpu(
            [{"cpu_us_per_event": {"consumer": c}} for c in before],
            [{"cpu_us_per_event": {"consumer": c}} for c in now],
        )
    found["ratios"] = ratios(found)
    return found


def halved(found: dict[str, Any]) -> bool | None:
    row = next(t for t in targets(found) if t["target"].startswith("consumer CPU halved"))
    verdict: bool | None = row["met"]
    return verdict


def test_without_pairs_the_consumer_cpu_against_the_baseline_is_a_ratio_of_the_medians_of_the_runs() -> None:
    found = cpu_report([5.48, 7.66, 6.58], [15.02, 17.9, 13.46])  # medians 6.58 and 15.02
    assert found["ratios"]["consumer_cpu_vs_baseline"] == 0.438
    assert halved(found) is True
    assert halved(cpu_report([7.52, 7.5, 7.51], [15.0, 15.0, 15.0])) is False  # 0.501: not halved
    assert halved(cpu_report([4.0], [])) is None  # no baseline runs: nothing to judge


def test_with_pairs_it_is_the_median_of_each_repetitions_ratio() -> None:
    # The benchmark of record on 604231b: 0.49 as a ratio of medians, 0.51 as the median of the pairs.
    found = cpu_report([6.82, 6.96, 7.48], [14.2, 13.44, 14.68], paired=True)
    assert found["variants"]["microbatch_baseline"]["paired_consumer_cpu_us"] == [
        [14.2, 6.82],
        [13.44, 6.96],
        [14.68, 7.48],
    ]
    assert found["ratios"]["consumer_cpu_vs_baseline"] == 0.51
    assert halved(found) is False


def test_a_failed_run_leaves_its_repetition_out_of_the_pairs() -> None:
    before: list[dict[str, Any]] = [
        {"cpu_us_per_event": {"consumer": 14.0}},
        {"error": "boom", "correct": False},
        {"cpu_us_per_event": {"consumer": 12.0}},
    ]
    now: list[dict[str, Any]] = [
        {"cpu_us_per_event": {"consumer": 7.0}},
        {"cpu_us_per_event": {"consumer": 6.0}},
        {"error": "boom"},
    ]
    assert paired_consumer_cpu(before, now) == [[14.0, 7.0]]


def rendered(found: dict[str, Any]) -> str:
    found["variants"]["kafka_ceiling"] = {"runs_consumer_cpu_us": [1.0]}
    found["variants"]["kafka_ceiling_decode"] = {"runs_consumer_cpu_us": [2.0]}
    found["ratios"] = ratios(found)
    found["targets"] = targets(found)
    found |= {
        "machine": {"nproc": 2, "cpu_model": "test", "memory_bytes": 2**30, "kernel": "test"},
        "versions": {},
        "settings": {"mode": "quick", "events": 1, "repetitions": 3, "postgresql": "", "microbatch": "",
                     "partitions": 4},
    }  # fmt: skip
    return render_markdown(found)


def test_the_baseline_note_gives_both_medians_each_repetitions_ratio_and_their_median() -> None:
    text = rendered(cpu_report([6.82, 6.96, 7.48], [14.2, 13.44, 14.68], paired=True))
    assert "Consumer CPU: 6.96 \u00b5s per event (medians of the runs" in text
    assert "14.2 \u00b5s of CPU per event against 6.96 now" in text
    assert "per repetition: 0.480, 0.518, 0.510; median **0.51\u00d7**" in text
    assert "| consumer CPU halved: \u2264 0.5\u00d7 the baseline's, side by side in this run | 0.51 | **no** |" in text
    assert "| consumer CPU \u2264 4 \u00b5s/event (median of the runs) | 6.96 | **no** |" in text


def test_a_baseline_that_could_not_be_built_is_said_and_its_target_not_judged() -> None:
    found = cpu_report([6.0], [])
    found["baseline_missing"] = "commit 9a5b9ef is not in this clone (a shallow clone?)"
    text = rendered(found)
    assert "(bench/baseline.py) was not run: commit 9a5b9ef is not in this clone" in text
    assert (
        "| consumer CPU halved: \u2264 0.5\u00d7 the baseline's, side by side in this run | \u2014 | \u2014 |" in text
    )


def test_without_pairs_the_note_says_it_is_a_ratio_of_the_medians() -> None:
    text = rendered(cpu_report([5.48, 7.66, 6.58], [15.02, 17.9, 13.46]))
    assert "No pair in a repetition; ratio of the medians **0.438\u00d7**" in text


@pytest.mark.parametrize(("correct", "verdict"), [(True, "yes"), (False, "NO")])
def test_the_window_grid_names_the_default_window_and_judges_its_row_on_the_plain_runs(
    monkeypatch: pytest.MonkeyPatch, correct: bool, verdict: str
) -> None:
    monkeypatch.setattr("bench.report.WINDOW_RECORDS", 1234)  # the row follows the default, whatever it is
    found = cpu_report([6.0], [12.0])
    found["variants"]["microbatch"] |= {"flush_p50_s": 0.08, "flush_p99_s": 0.12, "correct": correct}
    found["grid"] = {"max_records=1000": {"events_per_s": 40_000, "flush_p50_s": 0.02, "flush_p99_s": 0.03,
                                          "correct": not correct}}  # fmt: skip
    text = rendered(found)
    assert f"| max_records=1234 (default) | 60,000 | 0.08 s / 0.12 s | {verdict} |" in text
    assert f"| max_records=1000 | 40,000 | 0.02 s / 0.03 s | {'NO' if correct else 'yes'} |" in text


DEFAULTS = {limit.setting: limit.default for limit in LIMITS}


def test_the_settings_line_gives_the_consumer_s_own_defaults() -> None:
    assert window_settings() == (
        f"max_records={DEFAULTS['max_records']}, max_bytes={DEFAULTS['max_bytes'] // 2**20} MiB, "
        f"max_wait_ms={DEFAULTS['max_wait_ms']}"
    )
    found = report(60_000, 62_000)
    found["steady"] = {"50%": {"p99_latency_s": (DEFAULTS["max_wait_ms"] + 240) / 1000, "correct": True}}
    row = next(t for t in targets(found) if "p99 end-to-end" in t["target"])
    assert row["met"] is True
    assert f"({(DEFAULTS['max_wait_ms'] + 250) / 1000:g} s)" in row["target"]


@pytest.mark.parametrize(
    ("function", "parameter", "setting"),
    [
        (ceilings.pg_ceiling, "batch_size", "max_records"),
        (ceilings.raw_ingest_ceiling, "batch_size", "max_records"),
        (pg_profile.profile_flush, "batch_size", "max_records"),
        (variants.steady, "max_wait_ms", "max_wait_ms"),
    ],
)
def test_the_ceilings_profile_and_steady_runs_use_the_consumer_s_default_window(
    function: Callable[..., Any], parameter: str, setting: str
) -> None:
    assert inspect.signature(function).parameters[parameter].default == DEFAULTS[setting]


def _with_runs(*, steady_correct: bool, rss_correct: bool) -> dict[str, Any]:
    found = report(70_000, 72_000)
    found["variants"]["microbatch"]["correct"] = True
    found["variants"]["pg_ceiling"]["correct"] = True
    found["steady"] = {"50%": {"p99_latency_s": 0.2, "lag_bounded": True, "correct": steady_correct}}
    found["rss_drain"] = {"peak_rss_bytes": 100 * 2**20, "correct": rss_correct}
    found["grid"] = {"max_records=1000": {"correct": True}}
    return found


def test_a_figure_of_a_run_whose_tables_were_wrong_meets_no_target() -> None:
    def verdicts(found: dict[str, Any]) -> dict[str, bool | None]:
        return {t["target"]: t["met"] for t in targets(found) if "steady" in t["target"] or "RSS" in t["target"]}

    assert set(verdicts(_with_runs(steady_correct=True, rss_correct=True)).values()) == {True}
    assert set(verdicts(_with_runs(steady_correct=False, rss_correct=False)).values()) == {None}


def test_every_run_that_checks_its_tables_counts_toward_the_exit_status() -> None:
    assert all(runs_correct(_with_runs(steady_correct=True, rss_correct=True)).values())
    wrong = runs_correct(_with_runs(steady_correct=False, rss_correct=True))
    assert [name for name, right in wrong.items() if not right] == ["steady 50%"]
    assert set(runs_correct(_with_runs(steady_correct=True, rss_correct=True))) == {
        "variant microbatch", "variant pg_ceiling", "grid max_records=1000", "steady 50%", "memory drain",
    }  # fmt: skip
