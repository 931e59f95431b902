"""`make demo`: an example pipeline end to end on local services, verified against expected totals.

1. start (or reuse) the local Kafka and PostgreSQL (`python -m devstack up`);
2. start from a clean slate: a fresh `demo` database and fresh topics of the pipeline (by default
   `invoice-lines` and its dead-letter topic);
3. create the schema (`microbatch init-db`) and produce seed-like events with the pipeline's
   generator (`microbatch produce`; `--pipeline vendor-invoices`, or `make demo DEMO_PIPELINE=…`,
   runs the vendor-invoice example with its lookups instead of the invoices);
4. run `microbatch run` with a progress bar until every partition's stored position reaches its
   high watermark (bounded in time), then stop it with SIGTERM;
5. print a summary and exit 0 only when every table equals the expected totals (vendor-invoices:
   by natural key, each vendor and item created exactly once, nothing orphaned).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.admin import AdminClient
from psycopg import sql
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from consumer.vendor_workload import VendorWorkloadOptions
from devstack import DevstackError
from devstack.__main__ import STATE_DIR, up
from devstack.verify import (
    Check,
    compare_totals,
    compare_vendor_totals,
    dead_letters_by_reason,
    high_watermarks,
    load_expected,
    stored_positions,
)
from pipeline.spec_loader import DEFAULT_PIPELINE, PipelineFileError, load_pipeline

PARTITIONS, DATABASE = 4, "demo"
BIN = Path(sys.executable).parent
console = Console()


@dataclass(frozen=True)
class Demo:
    """An example pipeline as the demo runs it: how the produce step names its events (and what is
    special in their mix), the tables the summary counts, and the comparison that verifies them
    (topics and group: its TOML)."""

    pipeline: str
    events: str
    tables: tuple[str, ...]
    compare: Callable[[str, dict[str, Any]], list[Check]]
    title: str = "microbatch demo"
    mix: str = ""

    @property
    def selection(self) -> tuple[str, ...]:
        """`--pipeline NAME` for the microbatch commands; none for the default, whose output stays as it was."""
        return () if self.pipeline == DEFAULT_PIPELINE else ("--pipeline", self.pipeline)


_VARIANTS = f"{VendorWorkloadOptions(count=0).variant_ratio:.0%}"
DEMOS = {
    "invoices": Demo("invoices", "invoice events", ("transactions", "inventory", "item_sales_daily"), compare_totals),
    "vendor-invoices": Demo(
        "vendor-invoices",
        "vendor-invoice events",
        ("transactions", "vendors", "items", "inventory", "item_sales_daily"),
        compare_vendor_totals,
        title="microbatch demo: vendor-invoices",
        mix=f", {_VARIANTS} spelling the vendor or SKU differently",
    ),
}


@dataclass(frozen=True)
class Stage:
    """Where a demo runs: its pipeline's topics and group, the services, the scratch directory."""

    demo: Demo
    topic: str
    group: str
    dead_letters: str
    bootstrap: str
    database_url: str
    env: dict[str, str]
    work: Path


def _step(text: str) -> None:
    console.print(f"[bold cyan]▶[/] {text}")


def _fresh_database(url: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    info["dbname"] = DATABASE
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


def _fresh_topics(bootstrap: str, topics: tuple[str, ...]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for topic in topics:
        if topic in admin.list_topics(timeout=10).topics:
            admin.delete_topics([topic])[topic].result(timeout=30)
            deadline = time.monotonic() + 30
            while topic in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
                time.sleep(0.2)


def _run(env: dict[str, str], *args: str) -> None:
    result = subprocess.run([str(BIN / "microbatch"), *args], env=env, check=False, timeout=600)
    if result.returncode != 0:
        raise DevstackError(f"`microbatch {' '.join(args)}` failed with exit code {result.returncode}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds allowed for draining")
    parser.add_argument("--pipeline", choices=sorted(DEMOS), default=DEFAULT_PIPELINE, help="the example to run")
    args = parser.parse_args(argv)
    demo = DEMOS[args.pipeline]
    try:
        spec = load_pipeline(demo.pipeline)
        topic = spec.topics[0]
        _step("starting local Kafka and PostgreSQL (reused when already up)")
        services = up(STATE_DIR, with_prometheus=False)
        database_url = _fresh_database(services["DATABASE_URL"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROBATCH_")}
        env.update(KAFKA_BOOTSTRAP_SERVERS=services["KAFKA_BOOTSTRAP_SERVERS"], DATABASE_URL=database_url,
                   MICROBATCH_METRICS_PORT="0")  # fmt: skip
        stage = Stage(demo, topic, spec.group, spec.dead_letter_topic or f"{topic}.dlq",
                      services["KAFKA_BOOTSTRAP_SERVERS"], database_url, env, STATE_DIR / "demo")  # fmt: skip
        _fresh_topics(stage.bootstrap, (stage.topic, stage.dead_letters))
        stage.work.mkdir(parents=True, exist_ok=True)
        expected_file = stage.work / "expected.json"

        _step(f"creating the schema: {' '.join(('microbatch', 'init-db', *demo.selection))}")
        _run(env, "init-db", *demo.selection)
        _step(f"producing {args.count:,} {demo.events} (0.5% invalid, 0.5% producer duplicates{demo.mix}) to {topic}")
        _run(env, "produce", *demo.selection, "--count", str(args.count), "--partitions", str(PARTITIONS),
             "--bad-ratio", "0.005", "--duplicate-ratio", "0.005", "--seed", "2026",
             "--expected", str(expected_file))  # fmt: skip
        expected = load_expected(expected_file)
        seconds, port = _drain(stage, args.timeout)
        dead = dead_letters_by_reason(stage.bootstrap, stage.dead_letters)
        return _summary(stage, expected, dead, seconds, args.count, port=port)
    except (DevstackError, PipelineFileError, psycopg.Error, OSError) as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return 1


def _drain(stage: Stage, timeout: float) -> tuple[float, int]:
    """Run the consumer until caught up; return (seconds from its start to the last position, metrics port)."""
    work = stage.work
    targets = high_watermarks(stage.bootstrap, stage.topic, PARTITIONS)
    total = sum(targets.values())
    _step(f"running `microbatch run` until all {total:,} messages are consumed (log: {work / 'consumer.log'})")
    with (work / "consumer.log").open("w") as log:
        consumer = subprocess.Popen([str(BIN / "microbatch"), "run", *stage.demo.selection], env=stage.env,
                                    stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    started = time.monotonic()
    try:
        progress = Progress(TextColumn("consuming"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console)  # fmt: skip
        with progress:
            task = progress.add_task("drain", total=total)
            while True:
                done = sum(stored_positions(stage.database_url, stage.group).values())
                progress.update(task, completed=done)
                if done >= total:
                    break
                if consumer.poll() is not None:
                    raise DevstackError(f"the consumer exited early (code {consumer.returncode}); see its log")
                if time.monotonic() - started > timeout:
                    raise DevstackError(f"not drained within {timeout:.0f} s ({done:,}/{total:,})")
                time.sleep(0.25)
        seconds = time.monotonic() - started
    finally:
        if consumer.poll() is None:
            consumer.send_signal(signal.SIGTERM)
            consumer.wait(timeout=60)
    found = re.search(r"on port (\d+)", (work / "consumer.log").read_text())
    return seconds, int(found.group(1)) if found else 0


def _summary(
    stage: Stage, expected: dict[str, Any], dead: dict[str, int], seconds: float, produced: int, *, port: int
) -> int:
    demo, database_url = stage.demo, stage.database_url
    checks = demo.compare(database_url, expected)
    want_dead = expected["bad_by_reason"]
    checks.append(Check("dead letters by reason", dead == want_dead, f"{dead} (expected {want_dead})"))
    with psycopg.connect(database_url) as conn:
        counts = {
            table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
            for table in demo.tables
        }
    table = Table(title=demo.title, show_header=False)
    table.add_row("events consumed", f"{produced:,} in {seconds:.1f} s = {produced / seconds:,.0f} events/s")
    for name, row in counts.items():
        table.add_row(f"rows in {name}", f"{row[0]:,}" if row else "?")
    for check in checks:
        table.add_row(("[green]✓[/] " if check.ok else "[red]✗[/] ") + check.name, check.detail)
    console.print(table)
    ok = all(check.ok for check in checks)
    console.print("[bold green]all summaries verified[/]" if ok else "[bold red]verification FAILED[/]")
    console.print(
        f"the consumer served /metrics, /healthz and /readyz on http://127.0.0.1:{port} while it ran; "
        "`make run` keeps one running (port 9108)"
    )
    console.print("services are still up: `make down` stops them; `.devstack/env` has their addresses")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
