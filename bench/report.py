"""The benchmark's outputs: latest.json, BENCHMARKS.md (table, machine, settings, targets) and a PNG chart."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import pg_profile, profile
from bench.chart import draw_chart
from bench.commit_cost import most_replay_saves
from bench.defaults import WINDOW_RECORDS, WINDOW_WAIT_MS
from bench.verdicts import if_correct

MB = 1024 * 1024
P99_BOUND_S = (WINDOW_WAIT_MS + 250) / 1000  # steady at 50%: the default max_wait + 250 ms
ORDER = [
    "microbatch", "microbatch_replay", "microbatch_secure", "microbatch_lookups", "microbatch_same_items",
    "microbatch_baseline",
    "pg_ceiling", "raw_ingest", "kafka_ceiling", "kafka_ceiling_decode", "connect_insert", "connect_upsert",
    "quixstreams", "naive",
]  # fmt: skip
LABELS = {
    "microbatch": "microbatch (defaults)",
    "microbatch_replay": "microbatch, durability = replay (synchronous_commit off)",
    "raw_ingest": "raw ingest ceiling (binary COPY into the raw table only)",
    "connect_insert": "Kafka Connect + Debezium JDBC sink, insert mode",
    "connect_upsert": "Kafka Connect + Debezium JDBC sink, upsert mode",
    "microbatch_secure": "microbatch over SASL_SSL + verified TLS, runtime role",
    "microbatch_lookups": "microbatch + lookups (vendor-invoices)",
    "microbatch_same_items": "microbatch, as many items as lookups' pairs (control)",
    "microbatch_baseline": "microbatch before the performance work (baseline, same run)",
    "pg_ceiling": "our write path's ceiling (same statements from memory, no Kafka)",
    "kafka_ceiling": "Kafka ceiling (consume only)",
    "kafka_ceiling_decode": "Kafka ceiling + JSON decode",
    "quixstreams": "quixstreams PostgreSQLSink",
    "naive": "naive per-message consumer",
}


def _rate(report: dict[str, Any], name: str) -> float | None:
    value = report["variants"].get(name, {}).get("events_per_s")
    return float(value) if value else None


def _flush_p50(report: dict[str, Any]) -> float | None:
    value = report["variants"].get("microbatch", {}).get("flush_p50_s")
    return float(value) if value else None


def _consumer_cpu(report: dict[str, Any], name: str) -> float | None:
    """The median of a variant's runs' consumer CPU per event (µs), or None without any."""
    runs = report["variants"].get(name, {}).get("runs_consumer_cpu_us")
    return float(statistics.median(runs)) if runs else None


def _cpu_vs_baseline(report: dict[str, Any]) -> float | None:
    """Consumer CPU per event now / before the performance work: the median of each repetition's ratio (its two
    runs side by side), else the ratio of the medians of the runs."""
    pairs = report["variants"].get("microbatch_baseline", {}).get("paired_consumer_cpu_us")
    if pairs:
        return round(float(statistics.median(now / before for before, now in pairs)), 3)
    cpu, cpu_before = _consumer_cpu(report, "microbatch"), _consumer_cpu(report, "microbatch_baseline")
    return round(cpu / cpu_before, 3) if cpu and cpu_before else None


def ratios(report: dict[str, Any]) -> dict[str, float | None]:
    """Ratios of medians, to 3 decimals: the targets are judged on them, and 0.895 is not 0.90."""
    mine = _rate(report, "microbatch")

    def over(name: str) -> float | None:
        other = _rate(report, name)
        return round(mine / other, 3) if mine and other else None

    lookups, same_items = _rate(report, "microbatch_lookups"), _rate(report, "microbatch_same_items")
    secured, replay = _rate(report, "microbatch_secure"), _rate(report, "microbatch_replay")
    return {
        # replay / fsync: the same dataset with synchronous_commit off, right after the plain run.
        "replay_vs_fsync": round(replay / mine, 3) if replay and mine else None,
        # The most replay can save: a durable COMMIT's extra wait, as a share of a flush (bench/commit_cost.py).
        "replay_most_saves": most_replay_saves(report.get("commit_wait", {}), _flush_p50(report)),
        "vs_raw_ingest": over("raw_ingest"),
        # The consumer's CPU per event now / before the performance work (bench/baseline.py), side by side in each
        # repetition, so that most of the machine's speed on the day cancels out.
        "consumer_cpu_vs_baseline": _cpu_vs_baseline(report),
        "vs_connect_insert": over("connect_insert"),
        "vs_connect_upsert": over("connect_upsert"),
        # secure / plain: the same dataset over SASL_SSL, ACLs and verified TLS, right after the plain run.
        "secure_vs_plain": round(secured / mine, 3) if secured and mine else None,
        "vs_pg_ceiling": over("pg_ceiling"),
        "vs_kafka_ceiling": over("kafka_ceiling"),
        "vs_kafka_ceiling_decode": over("kafka_ceiling_decode"),
        "vs_naive": over("naive"),
        "vs_quixstreams": over("quixstreams"),
        # lookups / plain: the lookups variant's median over the plain invoice variant's, same run.
        "lookups_vs_plain": round(lookups / mine, 3) if lookups and mine else None,
        # lookups / the plain pipeline over as many items as lookups has pairs: the lookups' own cost.
        "lookups_vs_same_items": round(lookups / same_items, 3) if lookups and same_items else None,
    }


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    r = report["ratios"]
    mb = report["variants"].get("microbatch", {})
    # A figure counts only from a run whose tables were right (None otherwise: not met, not failed).
    steady = if_correct(report.get("steady", {}).get("50%", {}))
    rss = if_correct(report.get("rss_drain", {})).get("peak_rss_bytes")
    bad = report.get("bad_row", {})
    replay = report["variants"].get("microbatch_replay", {})
    fsync_p99, replay_p99 = mb.get("flush_p99_s"), replay.get("flush_p99_s")
    p99_drop = round(1 - replay_p99 / fsync_p99, 2) if fsync_p99 and replay_p99 else None
    rows: list[tuple[str, Any, Callable[[Any], bool]]] = [
        ("≥ 0.90× our write path's ceiling", r.get("vs_pg_ceiling"), lambda v: v >= 0.9),
        ("consumer CPU ≤ 4 µs/event (median of the runs)", _consumer_cpu(report, "microbatch"), lambda v: v <= 4),
        (
            "consumer CPU halved: ≤ 0.5× the baseline's, side by side in this run",
            r.get("consumer_cpu_vs_baseline"),
            lambda v: v <= 0.5,
        ),
        ("durability = replay: ≥ 1.1× the throughput of fsync", r.get("replay_vs_fsync"), lambda v: v >= 1.1),
        ("… or ≥ 30% lower p99 flush latency (share saved)", p99_drop, lambda v: v >= 0.3),
        ("≥ 1.5× Kafka Connect + Debezium JDBC sink, insert mode", r.get("vs_connect_insert"), lambda v: v >= 1.5),
        ("≥ 2× Kafka Connect + Debezium JDBC sink, upsert mode", r.get("vs_connect_upsert"), lambda v: v >= 2),
        ("≥ 300× the naive per-message consumer", r.get("vs_naive"), lambda v: v >= 300),
        ("≥ 2× quixstreams' PostgreSQLSink", r.get("vs_quixstreams"), lambda v: v >= 2),
        (
            "lookups / plain ≥ 0.85 (within 15% of the plain invoice pipeline)",
            r.get("lookups_vs_plain"),
            lambda v: v >= 0.85,
        ),
        (
            f"steady at 50%: p99 end-to-end ≤ max_wait + 250 ms ({P99_BOUND_S:g} s)",
            steady.get("p99_latency_s"),
            lambda v: v <= P99_BOUND_S,
        ),
        ("steady at 50%: lag bounded", steady.get("lag_bounded"), bool),
        ("peak RSS ≤ 250 MB draining 2,000,000 events", rss, lambda v: v <= 250 * MB),
        ("1 rejected row in 10,000 costs ≤ 3× a clean flush", bad.get("ratio"), lambda v: v <= 3),
    ]
    return [
        {"target": name, "measured": value, "met": None if value is None else bool(check(value))}
        for name, value, check in rows
    ]


def write_report(report: dict[str, Any], out: Path, *, root: Path) -> None:
    report["ratios"] = ratios(report)
    report["targets"] = targets(report)
    (out / "latest.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    markdown = out / "BENCHMARKS.md" if out != root / "bench" / "results" else root / "BENCHMARKS.md"
    markdown.write_text(render_markdown(report))
    names = [n for n in ORDER if report["variants"].get(n, {}).get("events_per_s")]
    bars = [(LABELS[n], float(report["variants"][n]["events_per_s"]), n == "microbatch") for n in names]
    title = f"microbatch vs ceilings and peers ({report['settings']['mode']}, {report['machine']['nproc']} cores)"
    draw_chart(bars, title, out / "chart.png")


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.3g}{unit}" if value < 100 else f"{value:,.0f}{unit}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def _commit_note(report: dict[str, Any]) -> str:
    """What replay can save at most here: the durable COMMIT's wait against a flush (bench/commit_cost.py)."""
    commit, most = report.get("commit_wait"), report["ratios"].get("replay_most_saves")
    if not commit or most is None:
        return ""
    return (
        f" All that replay removes is the durable COMMIT's wait for its WAL: after a window's worth "
        f"({commit['rows_per_transaction']:,} rows, {commit['wal_bytes_per_transaction'] / 1e6:.1f} MB of WAL) "
        f"a COMMIT takes {commit['fsync_commit_s'] * 1000:.2f} ms with synchronous_commit on and "
        f"{commit['replay_commit_s'] * 1000:.2f} ms with it off (medians of {commit['rounds']}, interleaved), "
        f"so replay can save at most **{most:.1%}** of a flush (p50 {_fmt(_flush_p50(report), ' s')}) on this "
        f"machine; a larger difference either way does not come from the commit."
    )


def _variant_notes(report: dict[str, Any]) -> list[str]:
    """A paragraph per variant that needs one: the peers' caveats, lookups, security and their controls."""
    r = report["ratios"]
    notes: list[str] = []
    for name in ("connect_insert", "connect_upsert", "quixstreams"):
        if note := report["variants"].get(name, {}).get("note"):
            notes += [f"{LABELS[name]}: {note}", ""]
    plain, replay = report["variants"].get("microbatch", {}), report["variants"].get("microbatch_replay")
    if replay:
        steady = report.get("steady", {})
        notes += [
            "Durability: `durability = replay` commits each flush with synchronous_commit off (a crash may lose "
            "the last commits, which are then read again from Kafka), on the plain variant's dataset right after "
            f"it: replay / fsync = **{_fmt(r.get('replay_vs_fsync'))}**; flush p50 / p99 "
            f"{_fmt(replay.get('flush_p50_s'), ' s')} / {_fmt(replay.get('flush_p99_s'), ' s')} against "
            f"{_fmt(plain.get('flush_p50_s'), ' s')} / {_fmt(plain.get('flush_p99_s'), ' s')}; steady at 50%, p99 "
            f"end to end {_fmt(steady.get('50% replay', {}).get('p99_latency_s'), ' s')} against "
            f"{_fmt(steady.get('50%', {}).get('p99_latency_s'), ' s')}.{_commit_note(report)}",
            "",
        ]
    notes += _cpu_note(report) + _baseline_note(report) + ceiling_gap_note(report)
    lookups = report["variants"].get("microbatch_lookups")
    if lookups:
        notes += [
            "Lookups: microbatch + lookups drains the vendor-invoices pipeline (two chained find-or-create "
            "lookups, vendors → items, names trimmed and lower-cased; summaries keyed by the canonical item id) "
            f"over a dataset of the same size and mix, {_fmt(lookups.get('pairs'))} distinct (vendor, sku) pairs "
            f"of which {_fmt(lookups.get('items_before'))} exist before the run and "
            f"{_fmt(lookups.get('pairs_created_in_run'))} are created during it: lookups / plain = "
            f"**{_fmt(r.get('lookups_vs_plain'))}** (medians, measured side by side in each repetition).",
            "",
        ]
    if report["variants"].get("microbatch_secure"):
        notes += [
            "Security: microbatch over Kafka's SASL_SSL listener (SCRAM-SHA-512, the StandardAuthorizer, the "
            "documented ACLs) and PostgreSQL over TLS (sslmode=verify-full) as the least-privilege runtime role, "
            f"on the plain variant's dataset right after it: secure / plain = **{_fmt(r.get('secure_vs_plain'))}**.",
            "",
        ]
    same_items = report["variants"].get("microbatch_same_items")
    if lookups and same_items:
        notes += [
            f"Its control, the plain invoice pipeline over {_fmt(lookups.get('pairs'))} items (as many as the "
            "lookups' pairs, so its summaries take as many upserts per window), measured right after it: "
            f"lookups / same items = **{_fmt(r.get('lookups_vs_same_items'))}**. What separates the two ratios "
            "is the summaries' cardinality, not the lookups.",
            "",
        ]
    return notes


def _cpu_note(report: dict[str, Any]) -> list[str]:
    """Where the consumer's CPU goes, from this run's floors: the same process's work with nothing but
    consuming (and parsing) to do."""
    plain, floor, parsed = (_consumer_cpu(report, n) for n in ("microbatch", "kafka_ceiling", "kafka_ceiling_decode"))
    if plain is None or floor is None or parsed is None:
        return []
    return [
        f"Consumer CPU: {_fmt(plain)} µs per event (medians of the runs, here and below). Of that, taking the "
        f"messages out of Kafka costs {_fmt(floor)} µs per event even with nothing else to do (the Kafka "
        f"ceiling's own CPU), and {_fmt(parsed)} µs with JSON parsing. The rest ({_fmt(round(plain - parsed, 2))} "
        "µs) is validating each field, encoding COPY rows, and the window's bookkeeping, on the loop thread; the "
        "writer thread sends bytes that are ready. The profile below splits the consumer's Python CPU by stage.",
        "",
    ]


def _baseline_note(report: dict[str, Any]) -> list[str]:
    """The consumer's CPU per event now against before the performance work, measured side by side."""
    before, ratio = _consumer_cpu(report, "microbatch_baseline"), report["ratios"].get("consumer_cpu_vs_baseline")
    if missing := report.get("baseline_missing"):
        return [f"The consumer as it was before the performance work (bench/baseline.py) was not run: {missing}", ""]
    if before is None or ratio is None:
        return []
    pairs = report["variants"]["microbatch_baseline"].get("paired_consumer_cpu_us", [])
    each = ", ".join(f"{now / then:.3f}" for then, now in pairs)
    how = f"Now / before, per repetition: {each}; median" if pairs else "No pair in a repetition; ratio of the medians"
    return [
        f"The consumer as it was before the performance work (bench/baseline.py) drained the same dataset right before "
        f"each plain run: {_fmt(before)} µs of CPU per event against {_fmt(_consumer_cpu(report, 'microbatch'))} now. "
        f"{how} **{_fmt(ratio)}×**. The day's machine speed moves the two runs of a repetition much alike, not "
        "quite: what is left is the noise between two neighbouring runs, and the baseline always runs first.",
        "",
    ]


def ceiling_gap_note(report: dict[str, Any], window: int = WINDOW_RECORDS) -> list[str]:
    """Per window of `window` events at each median rate: microbatch against our write path's ceiling, split by its p50
    flush (unsplit when microbatch is not slower or its flush is outside the gap)."""
    plain, ceiling, flush = _rate(report, "microbatch"), _rate(report, "pg_ceiling"), _flush_p50(report)
    if plain is None or ceiling is None or flush is None:
        return []
    ours, theirs, flush_ms = window * 1e3 / plain, window * 1e3 / ceiling, flush * 1e3
    if not theirs < flush_ms < ours:  # no gap, or a median flush outside it: nothing to split
        return [f"Per window of {window:,} events: {ours:.1f} ms in microbatch, {theirs:.1f} ms in the ceiling.", ""]
    return [
        f"Against our write path's ceiling, per window of {window:,} events: {ours:.1f} ms in microbatch, "
        f"{theirs:.1f} ms in the ceiling. Microbatch's flush takes {flush_ms:.1f} ms of it (p50), so "
        f"{flush_ms - theirs:.1f} ms of the {ours - theirs:.1f} ms between them is in the flush itself, the "
        "same statements running while the loop thread decodes the next window and the broker serves it "
        f"on the same cores, and {ours - flush_ms:.1f} ms is between flushes.",
        "",
    ]


def render_markdown(report: dict[str, Any]) -> str:
    m, v, s = report["machine"], report["versions"], report["settings"]
    code = report.get("source", {})
    on = f" on commit `{str(code.get('commit', 'unknown'))[:12]}`" + (
        " with uncommitted changes" if code.get("dirty") else ""
    )
    lines = [
        "# Benchmarks",
        "",
        f"Regenerated by `make bench`{on} ({s['mode']} mode: {s['events']:,} events, {s['repetitions']} interleaved "
        f"repetitions, medians; {report.get('seconds', 0):.0f} s). Raw figures: `bench/results/latest.json`; chart: "
        "`bench/results/chart.png`. Every run of microbatch (variants, window grid, steady mode, memory) and "
        "of our write path's ceiling is checked against the generator's expected totals: row count, distinct "
        "event ids and every summary row; any run that fails its check fails `make bench` and shows NO, and "
        "a wrong steady or memory run's figures count toward no target. The Kafka and raw-ingest ceilings "
        "and the peers are checked against their own counts (messages seen, rows written).",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_bytes'] / 2**30:.0f} GiB, kernel {m['kernel']}; "
        "Kafka, PostgreSQL and the consumer share the machine.",
        f"Versions: Kafka {v.get('kafka')}, PostgreSQL {v.get('postgresql')}, librdkafka {v.get('librdkafka')}, "
        f"confluent-kafka {v.get('confluent_kafka')}, psycopg {v.get('psycopg')}, orjson {v.get('orjson')}"
        + (f", quixstreams {v['quixstreams']}" if "quixstreams" in v else "")
        + ".",
        f"Settings: PostgreSQL {s['postgresql']}; microbatch {s['microbatch']}; {s['partitions']} partitions; "
        "events ~200 bytes of JSON, 1,000 items, 0.1% invalid, 0.5% producer duplicates.",
        "",
        "| variant | events/s | runs | CPU µs/event of the median run (consumer / PostgreSQL / broker) | peak RSS "
        "| WAL bytes/event "
        "| flush p50 / p99 | correct |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ORDER:
        fig = report["variants"].get(name)
        if not fig:
            continue
        cpu = fig.get("cpu_us_per_event", {})
        cpu = {"consumer": cpu.get("connect"), **cpu} if "connect" in cpu else cpu  # the Connect JVM is its consumer
        cpu_text = " / ".join(_fmt(cpu.get(k)) for k in ("consumer", "postgres", "broker")) if cpu else "—"
        rss = f"{fig['peak_rss_bytes'] / MB:.0f} MB" if fig.get("peak_rss_bytes") else "—"
        flush = (
            f"{_fmt(fig.get('flush_p50_s'), ' s')} / {_fmt(fig.get('flush_p99_s'), ' s')}"
            if "flush_p50_s" in fig
            else "—"
        )
        runs = ", ".join(_fmt(x) for x in fig.get("runs_events_per_s", []))
        lines.append(
            f"| {LABELS[name]} | {_fmt(fig.get('events_per_s'))} | {runs} | {cpu_text} | {rss} | "
            f"{_fmt(fig.get('wal_bytes_per_event'))} | {flush} | {'yes' if fig.get('correct') else 'NO'} |"
        )
    r = report["ratios"]
    lines += [
        "",
        f"Ratios: microbatch = **{_fmt(r.get('vs_pg_ceiling'))}×** our write path's ceiling (its share of our write "
        f"path's ceiling), **{_fmt(r.get('vs_raw_ingest'))}×** the raw ingest ceiling (its share of raw ingest: the "
        f"same rows COPYed into the raw table alone), {_fmt(r.get('vs_kafka_ceiling'))}× the Kafka ceiling "
        f"({_fmt(r.get('vs_kafka_ceiling_decode'))}× with decoding), **{_fmt(r.get('vs_connect_insert'))}×** and "
        f"**{_fmt(r.get('vs_connect_upsert'))}×** Kafka Connect's JDBC sink (insert, upsert), "
        f"**{_fmt(r.get('vs_naive'))}×** the naive consumer, **{_fmt(r.get('vs_quixstreams'))}×** quixstreams. "
        f"durability = replay / fsync = **{_fmt(r.get('replay_vs_fsync'))}**.",
        "",
    ]
    lines += _variant_notes(report)
    if report.get("grid"):
        lines += [
            "Window grid (one run each, same data):",
            "",
            "| setting | events/s | flush p50 / p99 | correct |",
            "|---|---|---|---|",
        ]
        rows = {f"max_records={WINDOW_RECORDS} (default)": report["variants"]["microbatch"], **report["grid"]}
        for name, fig in rows.items():
            lines.append(
                f"| {name} | {_fmt(fig.get('events_per_s'))} | {_fmt(fig.get('flush_p50_s'), ' s')} / "
                f"{_fmt(fig.get('flush_p99_s'), ' s')} | {'yes' if fig.get('correct') else 'NO'} |"
            )
        lines.append("")
    if report.get("steady"):
        lines += [
            "Steady mode (a producer at a fixed share of the drain rate; latency = start of the flush "
            "transaction − Kafka timestamp, so add the flush duration for commit time):",
            "",
            "| rate | events | p50 latency | p99 latency | max lag | lag bounded | correct |",
            "|---|---|---|---|---|---|---|",
        ]
        for share, fig in report["steady"].items():
            lines.append(
                f"| {share} ({_fmt(fig['rate'])}/s) | {_fmt(fig['events'])} | {_fmt(fig['p50_latency_s'], ' s')} | "
                f"{_fmt(fig['p99_latency_s'], ' s')} | {_fmt(fig['max_lag'])} | {fig['lag_bounded']} | "
                f"{ {True: 'yes', False: 'NO'}.get(fig.get('correct'), '—') } |"  # —: a run made before the check
            )
        lines.append("")
    bad = report.get("bad_row", {})
    if bad:
        lines += [
            "Bisection: a 10,000-row flush with 1 row the database rejects took "
            f"{_fmt(bad['one_bad_row_flush_s'], ' s')} "
            f"against {_fmt(bad['clean_flush_s'], ' s')} clean ({_fmt(bad['ratio'])}×, "
            f"{bad['statements_with_one_bad_row']} statements).",
            "",
        ]
    lines += profile.markdown(report.get("profile", {}))
    lines += pg_profile.markdown(report.get("pg_profile", {}))
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in report["targets"]:
        met = "—" if t["met"] is None else ("yes" if t["met"] else "**no**")
        measured = t["measured"]
        if isinstance(measured, int) and measured > 10 * MB:
            measured = f"{measured / MB:.0f} MB"
        lines.append(f"| {t['target']} | {_fmt(measured)} | {met} |")
    lines.append("")
    return "\n".join(lines)
