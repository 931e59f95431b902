"""`make bench` / `make bench-quick`: microbatch side by side with the physical ceilings (our write path's
and raw ingest), a naive per-message consumer, quixstreams and Kafka Connect's JDBC sink (bench/connect_peer.py),
with its own variants (durability = replay, secured, lookups: bench/lookups.py) and with its own consumer as it
was before the performance work (bench/baseline.py), on this machine, in one run. Writes bench/results/latest.json,
BENCHMARKS.md and bench/results/chart.png.

Variants are interleaved (every repetition runs each once) and medians are reported. microbatch's runs
(variants, grid, steady mode, memory) and our write path's ceiling are checked against the generator's
expected totals, the other ceilings and the peers against their own counts; the exit status is 1 unless
every checked run was right (bench/verdicts.py). PostgreSQL keeps its defaults (fsync and
synchronous_commit on).

`--export DIR` (the smoke test's) also writes what each dataset's broker acknowledged and what each
table-writing variant left in its tables, for a check made outside the harness (bench/export.py).

`--only NAME,...` runs those variants' repetitions and nothing else (no grid, steady mode, bad-row or
memory runs): e.g. `--only microbatch,microbatch_lookups --out /tmp/bench` measures lookups / plain. Naming a
variant the mode never runs (the baseline in smoke mode, a peer left out by --no-quix or --no-connect) is a usage
error; one that did not run (a baseline that could not be made ready) makes the exit status 1.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from bench import baseline, ceilings, commit_cost, connect_peer, lookups, pg_profile, profile, secure, variants
from bench.defaults import WINDOW_RECORDS, window_settings
from bench.lab import Dataset, Lab
from bench.measure import machine, source, versions
from bench.report import write_report
from bench.verdicts import runs_correct
from pipeline.records import Record

console = Console(stderr=True)
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mode:
    name: str
    events: int
    repetitions: int
    naive_seconds: float
    quix_events: int
    steady_seconds: float
    rss_events: int
    grid: tuple[int, ...]
    bad_row_rounds: int
    connect_events: int  # Kafka Connect's dataset (0: not run); large enough for its JIT to warm up
    baseline: bool = True  # the consumer before the performance work, side by side (bench/baseline.py)


MODES = {
    "full": Mode("full", 500_000, 3, 15.0, 200_000, 30.0, 2_000_000, (1000, 20_000), 5, 300_000),
    "quick": Mode("quick", 100_000, 3, 5.0, 30_000, 10.0, 0, (1000, 20_000), 3, 100_000),
    "smoke": Mode("smoke", 20_000, 1, 2.0, 0, 0.0, 0, (), 1, 0, baseline=False),
}


REPLAY = {"MICROBATCH_DURABILITY": "replay"}


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(run[key]) for run in runs if key in run))


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run's figures (by events/s), plus every run's rate and the overall correctness."""
    ok = [run for run in runs if "events_per_s" in run]
    if not ok:
        return {"correct": False, "runs": runs}
    middle = sorted(ok, key=lambda run: run["events_per_s"])[len(ok) // 2]
    summary = {
        **middle,
        "events_per_s": _median(ok, "events_per_s"),
        "runs_events_per_s": [r["events_per_s"] for r in ok],
        # Every run's consumer CPU, for the medians of the report (bench.report: its CPU note and targets).
        "runs_consumer_cpu_us": [c for r in ok if (c := r.get("cpu_us_per_event", {}).get("consumer")) is not None],
        "correct": all(run.get("correct", False) for run in runs),
    }
    if errors := [run["error"] for run in runs if "error" in run]:
        summary["errors"] = errors  # a failed repetition says why, in latest.json
    return summary


def paired_consumer_cpu(before: list[dict[str, Any]], now: list[dict[str, Any]]) -> list[list[float]]:
    """[baseline, plain] consumer CPU per event of each repetition where both runs measured it (the lists
    hold one entry per repetition, failed runs included, so they pair by position)."""
    pairs = [(b.get("cpu_us_per_event", {}).get("consumer"), n.get("cpu_us_per_event", {}).get("consumer"))
             for b, n in zip(before, now, strict=False)]  # fmt: skip
    return [[b, n] for b, n in pairs if b and n]


def _export_dir(export: Path | None, name: str, repetition: int = 1) -> Path | None:
    """DIR/<variant> (DIR/<variant>-<n> for repetitions after the first), or None without --export."""
    if export is None:
        return None
    return export / (name if repetition == 1 else f"{name}-{repetition}")


VARIANTS = (
    "kafka_ceiling", "kafka_ceiling_decode", "pg_ceiling", "raw_ingest", "microbatch_baseline", "microbatch",
    "microbatch_replay",
    "microbatch_secure", "microbatch_lookups", "microbatch_same_items", "naive", "connect_insert", "connect_upsert",
    "quixstreams",
)  # fmt: skip
CONNECT_MODES: dict[str, Literal["insert", "upsert"]] = {"connect_insert": "insert", "connect_upsert": "upsert"}


Step = Callable[[Path | None], dict[str, Any]]  # a variant's run, given its export directory (or None)


@dataclass
class Datasets:
    """What the variants read, preloaded (and prepared) before the first repetition."""

    main: Dataset
    records: list[Record]  # main's events regenerated in memory, for the ceilings fed from memory
    vendor: Dataset | None = None  # the lookups variant's own (bench/lookups.py)
    same_items: Dataset | None = None  # its control: as many distinct items as it has (vendor, sku) pairs
    naive: Dataset | None = None
    quix: tuple[Dataset, Path, Path] | None = None  # and the peer's python and script
    connect: Dataset | None = None
    baseline: Path | None = None  # the baseline consumer's executable (bench/baseline.py)
    baseline_missing: str | None = None  # why it could not be made ready: its variant is not run


def _datasets(lab: Lab, mode: Mode, wanted: frozenset[str], *, with_quix: bool, with_connect: bool) -> Datasets:
    console.print(f"[bold]microbatch benchmark[/] ({mode.name}): preloading {mode.events:,} events")
    main = lab.preload("main", mode.events, seed=7)
    sets = Datasets(main, ceilings.memory_records(main) if wanted & {"pg_ceiling", "raw_ingest"} else [])
    if "microbatch_lookups" in wanted:
        sets.vendor = lookups.preload(lab, mode.events, seed=11)
    if "microbatch_same_items" in wanted:  # lookups / same items: the lookups' cost at the same cardinality
        sets.same_items = lab.preload("same-items", mode.events, seed=7, items=lookups.PAIRS)
    if mode.baseline and "microbatch_baseline" in wanted:
        console.print(f"the baseline consumer ({baseline.BASELINE[:12]}): a worktree and its venv")
        try:
            sets.baseline = baseline.checkout(baseline.BASELINE)
        except baseline.CheckoutFailed as error:  # the report says why; the other variants still run
            sets.baseline_missing = str(error)
            console.print(f"[bold red]the baseline consumer is not run[/]: {error}")
    if "naive" in wanted:
        sets.naive = lab.preload("naive", min(20_000, mode.events), seed=8)
    if with_quix and mode.quix_events and "quixstreams" in wanted:
        from bench.quix_env import ensure_quix_venv  # noqa: PLC0415 - only when the peer runs

        python = ensure_quix_venv(ROOT)
        sets.quix = (lab.preload("quix", mode.quix_events, seed=9), python, ROOT / "bench" / "quix_peer.py")
    if with_connect and mode.connect_events and wanted & set(CONNECT_MODES):
        connect_peer.prefetch()  # the worker's and the sink's jars, from Maven Central once per machine
        sets.connect = lab.preload("connect", mode.connect_events, seed=12)
        connect_peer.schemaful_copy(lab, sets.connect)  # untimed: the sink needs schemaful records
    return sets


def _steps(lab: Lab, mode: Mode, sets: Datasets) -> list[tuple[str, Step]]:
    """One repetition's runs, in order: those measured side by side are next to what they are compared with."""
    main, records = sets.main, sets.records
    steps: list[tuple[str, Step]] = [
        ("kafka_ceiling", lambda _: ceilings.kafka_ceiling(lab, main, decode=False)),
        ("kafka_ceiling_decode", lambda _: ceilings.kafka_ceiling(lab, main, decode=True)),
        ("pg_ceiling", lambda where: ceilings.pg_ceiling(lab, main, records, export=where)),
        ("raw_ingest", lambda where: ceilings.raw_ingest_ceiling(lab, main, records, export=where)),
    ]
    if (base := sets.baseline) is not None:  # right before the plain run: consumer CPU now / then, side by side
        steps.append(("microbatch_baseline", lambda where: baseline.run_baseline(lab, main, base, export=where)))
    steps += [
        ("microbatch", lambda where: variants.run_microbatch(lab, main, {}, label="defaults", export=where)),
        # Right after the plain run: replay / fsync is what synchronous_commit = off buys.
        ("microbatch_replay", lambda w: variants.run_microbatch(lab, main, REPLAY, label="replay", export=w)),
        # Right after the plain run, on its dataset: secure / plain is the cost of TLS, SASL and ACLs.
        ("microbatch_secure", lambda where: secure.run_secure(lab, main, export=where)),
    ]
    if (vendor := sets.vendor) is not None:  # right after the plain run: lookups / plain, side by side
        steps.append(("microbatch_lookups", lambda where: lookups.run_lookups(lab, vendor, export=where)))
    if (same := sets.same_items) is not None:
        same_items = functools.partial(variants.run_microbatch, lab, same, {}, label="same-items")
        steps.append(("microbatch_same_items", lambda where: same_items(export=where)))
    if (naive := sets.naive) is not None:
        steps.append(("naive", lambda where: ceilings.naive(lab, naive, max_seconds=mode.naive_seconds, export=where)))
    if (connect := sets.connect) is not None:
        for name, sink in CONNECT_MODES.items():
            steps.append((name, functools.partial(_connect_step, lab, connect, sink)))
    if (quix := sets.quix) is not None:
        steps.append(("quixstreams", lambda _: variants.quixstreams(lab, *quix)))
    return steps


def _connect_step(lab: Lab, dataset: Dataset, sink: Literal["insert", "upsert"], _: Path | None) -> dict[str, Any]:
    return connect_peer.run_connect(lab, dataset, sink, batch_size=WINDOW_RECORDS)


def run(
    mode: Mode,
    out: Path,
    *,
    with_quix: bool,
    with_connect: bool = True,
    export: Path | None = None,
    only: frozenset[str] | None = None,
) -> dict[str, Any]:
    """The benchmark; `only`: just the repetitions of these variants (None: everything)."""
    started, code = time.monotonic(), source(ROOT)  # the commit, read before the outputs are rewritten
    lab = Lab.start(console, export=export)
    wanted = frozenset(VARIANTS) if only is None else only
    try:
        sets = _datasets(lab, mode, wanted, with_quix=with_quix, with_connect=with_connect)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
        for repetition in range(1, mode.repetitions + 1):
            console.print(f"repetition {repetition}/{mode.repetitions}")
            for name, step in _steps(lab, mode, sets):
                if name not in wanted:
                    continue
                try:
                    figures = step(_export_dir(export, name, repetition))
                except Exception as exc:
                    figures = {"error": f"{type(exc).__name__}: {exc}"[:800], "correct": False}
                results[name].append(figures)
                console.print(f"  {name:22} {figures.get('events_per_s', figures.get('error'))}")
        report: dict[str, Any] = {
            "source": code,
            "machine": machine(),
            "versions": versions(lab, sets.quix[1] if sets.quix else None),
            "settings": {
                "mode": mode.name,
                "events": mode.events,
                "repetitions": mode.repetitions,
                "postgresql": "fsync=on, synchronous_commit=on, full_page_writes=on (defaults)",
                "microbatch": f"defaults: {window_settings()}",
                "partitions": 4,
            },
            "variants": {name: _summary(runs) for name, runs in results.items() if runs},
        }
        if sets.baseline_missing is not None:
            report["baseline_missing"] = sets.baseline_missing
        if paired := paired_consumer_cpu(results["microbatch_baseline"], results["microbatch"]):
            report["variants"]["microbatch_baseline"]["paired_consumer_cpu_us"] = paired
        if only is not None:
            report["settings"]["only"] = sorted(only)
            report["seconds"] = round(time.monotonic() - started, 1)
            write_report(report, out, root=ROOT)
            return report
        _extras(lab, mode, sets.main, sets.records, report, export=export)
        report["seconds"] = round(time.monotonic() - started, 1)
        write_report(report, out, root=ROOT)
        return report
    finally:
        lab.stop()


def _extras(
    lab: Lab, mode: Mode, main: Dataset, records: list[Record], report: dict[str, Any], *, export: Path | None
) -> None:
    """The runs beyond the variants' repetitions: the window grid, the bad-row cost, steady mode, memory,
    where PostgreSQL's time goes in a flush (bench/pg_profile.py) and where the consumer's CPU goes
    (bench/profile.py)."""
    grid = {}
    for max_records in (n for n in mode.grid if n != WINDOW_RECORDS):  # the default's row is the plain runs'
        console.print(f"grid: max_records={max_records}")
        grid[f"max_records={max_records}"] = variants.run_microbatch(
            lab,
            main,
            {"MICROBATCH_MAX_RECORDS": str(max_records)},
            label=f"grid{max_records}",
            export=_export_dir(export, f"grid-max_records={max_records}"),
        )
    report["grid"] = grid
    plain = report["variants"].get("microbatch", {})
    console.print("what a durable COMMIT waits for, after a window's WAL")
    report["commit_wait"] = commit_cost.commit_wait(
        lab.fresh_database(), rows=WINDOW_RECORDS, wal_bytes_per_row=plain.get("wal_bytes_per_event") or 500
    )
    console.print("where PostgreSQL's time goes in a flush (EXPLAIN ANALYZE)")
    try:
        report["pg_profile"] = pg_profile.profile_flush(lab, records)
    except Exception as exc:  # the report says why; the variants' figures stand without it
        report["pg_profile"] = {"error": f"{type(exc).__name__}: {exc}"[:800]}
    console.print("flush cost with 1 rejected row in 10,000")
    report["bad_row"] = ceilings.bad_row_cost(lab, records, rounds=mode.bad_row_rounds)
    drain_rate = report["variants"]["microbatch"].get("events_per_s", 0)
    if mode.steady_seconds and drain_rate:
        report["steady"] = {}
        for share in (0.5, 0.8):
            console.print(f"steady at {share:.0%} of the drain rate ({drain_rate * share:,.0f}/s)")
            report["steady"][f"{share:.0%}"] = variants.steady(lab, drain_rate * share, mode.steady_seconds, {})
        console.print("steady at 50% with durability = replay")  # end-to-end latency of the same load, replay
        report["steady"]["50% replay"] = variants.steady(lab, drain_rate * 0.5, mode.steady_seconds, REPLAY)
        microbatch = report["variants"]["microbatch"]
        microbatch["p50_latency_s"] = report["steady"]["50%"]["p50_latency_s"]
        microbatch["p99_latency_s"] = report["steady"]["50%"]["p99_latency_s"]
    if mode.rss_events:
        console.print(f"memory: draining a {mode.rss_events:,}-event backlog")
        backlog = lab.preload("rss", mode.rss_events, seed=10)
        report["rss_drain"] = variants.run_microbatch(lab, backlog, {}, label="rss")
        report["variants"]["microbatch"]["peak_rss_bytes"] = report["rss_drain"]["peak_rss_bytes"]
    console.print("profile: one more drain of the main dataset, sampled by py-spy")
    try:
        report["profile"] = profile.profile_consumer(lab, main)
    except Exception as exc:  # the report says why; the variants' figures stand without it
        report["profile"] = {"error": f"{type(exc).__name__}: {exc}"[:800]}


def never_run(mode: Mode, *, with_quix: bool, with_connect: bool) -> dict[str, str]:
    """The variants `mode` (and the flags) never run, with why: `--only` naming one is a usage error."""
    skipped = {} if mode.baseline else {"microbatch_baseline": f"the {mode.name} mode does not build the baseline"}
    if not (with_quix and mode.quix_events):
        skipped["quixstreams"] = f"the {mode.name} mode does not run it" if not mode.quix_events else "--no-quix"
    if not (with_connect and mode.connect_events):
        reason = f"the {mode.name} mode does not run it" if not mode.connect_events else "--no-connect"
        skipped |= dict.fromkeys(CONNECT_MODES, reason)
    return skipped


def _variant_names(text: str) -> frozenset[str]:
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    if not names or names - set(VARIANTS):
        raise argparse.ArgumentTypeError(f"{text!r}: choose among {', '.join(VARIANTS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results", help="where latest.json and chart.png go"
    )
    parser.add_argument("--no-quix", action="store_true", help="skip the quixstreams peer (no venv needed)")
    parser.add_argument("--no-connect", action="store_true", help="skip the Kafka Connect peer (no JVM worker)")
    parser.add_argument(
        "--only",
        type=_variant_names,
        default=None,
        metavar="NAME,...",
        help=f"run only these variants' repetitions, nothing else ({', '.join(VARIANTS)})",
    )
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write the datasets' ledgers and each table-writing variant's final tables there (CSV)",
    )
    args = parser.parse_args(argv)
    if args.only is not None and args.out.resolve() == (ROOT / "bench" / "results").resolve():
        parser.error("--only makes a partial report: write it elsewhere (--out DIR), not over the one of record")
    mode, with_quix, with_connect = MODES[args.mode], not args.no_quix, not args.no_connect
    idle = never_run(mode, with_quix=with_quix, with_connect=with_connect)
    if named := sorted(set(args.only or ()) & idle.keys()):
        parser.error("; ".join(f"--only {name}: {idle[name]}" for name in named))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.export is not None:
        args.export.mkdir(parents=True, exist_ok=True)
    report = run(mode, args.out, with_quix=with_quix, with_connect=with_connect, export=args.export, only=args.only)
    missing = sorted((args.only or frozenset()) - report["variants"].keys())  # e.g. a baseline not made ready
    wrong = sorted(name for name, right in runs_correct(report).items() if not right)
    correct = not wrong
    console.print(f"benchmark finished in {report['seconds']:.0f} s; every run that ran was correct: {correct}")
    if wrong:
        console.print(f"[bold red]wrong tables[/]: {', '.join(wrong)}")
    if why := report.get("baseline_missing"):  # not a failure unless it was asked for by name
        console.print(f"[bold red]the baseline was not run[/]: {why}")
    if missing:
        console.print(f"[bold red]not run[/]: {', '.join(missing)}")
    return 0 if correct and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
