"""`make demo`: the main job end to end on local services, verified against expected totals.

1. start (or reuse) the local Kafka and PostgreSQL (`python -m devstack up`);
2. start from a clean slate: a fresh `demo` database and a fresh `invoice-lines` topic;
3. create the schema (`microbatch init-db`) and produce seed-like invoice events;
4. run `microbatch run` with a progress bar until every partition's stored position reaches its
   high watermark (bounded in time), then stop it with SIGTERM;
5. print a summary and exit 0 only when every summary table equals the expected totals.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.admin import AdminClient
from psycopg import sql
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from devstack import DevstackError
from devstack.__main__ import STATE_DIR, up
from devstack.verify import (
    Check,
    compare_totals,
    dead_letters_by_reason,
    high_watermarks,
    load_expected,
    stored_positions,
)

TOPIC, GROUP, PARTITIONS, DATABASE = "invoice-lines", "microbatch-invoices", 4, "demo"
DEAD_LETTERS = "invoice-lines.dlq"
BIN = Path(sys.executable).parent
console = Console()


def _step(text: str) -> None:
    console.print(f"[bold cyan]▶[/] {text}")


def _fresh_database(url: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    info["dbname"] = DATABASE
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


def _fresh_topics(bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for topic in (TOPIC, DEAD_LETTERS):
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
    args = parser.parse_args(argv)
    work = STATE_DIR / "demo"
    try:
        _step("starting local Kafka and PostgreSQL (reused when already up)")
        services = up(STATE_DIR, with_prometheus=False)
        database_url = _fresh_database(services["DATABASE_URL"])
        _fresh_topics(services["KAFKA_BOOTSTRAP_SERVERS"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROBATCH_")}
        env.update(KAFKA_BOOTSTRAP_SERVERS=services["KAFKA_BOOTSTRAP_SERVERS"], DATABASE_URL=database_url,
                   MICROBATCH_METRICS_PORT="0")  # fmt: skip
        work.mkdir(parents=True, exist_ok=True)
        expected_file = work / "expected.json"

        _step("creating the schema: microbatch init-db")
        _run(env, "init-db")
        _step(f"producing {args.count:,} invoice events (0.5% invalid, 0.5% producer duplicates) to {TOPIC}")
        _run(env, "produce", "--count", str(args.count), "--partitions", str(PARTITIONS), "--bad-ratio", "0.005",
             "--duplicate-ratio", "0.005", "--seed", "2026", "--expected", str(expected_file))  # fmt: skip
        expected = load_expected(expected_file)
        seconds, port = _drain(env, services["KAFKA_BOOTSTRAP_SERVERS"], database_url, work, args.timeout)
        dead = dead_letters_by_reason(services["KAFKA_BOOTSTRAP_SERVERS"], DEAD_LETTERS)
        return _summary(database_url, expected, dead, seconds, args.count, port=port)
    except (DevstackError, psycopg.Error, OSError) as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return 1


def _drain(env: dict[str, str], bootstrap: str, database_url: str, work: Path, timeout: float) -> tuple[float, int]:
    """Run the consumer until caught up; return (seconds from its start to the last position, metrics port)."""
    targets = high_watermarks(bootstrap, TOPIC, PARTITIONS)
    total = sum(targets.values())
    _step(f"running `microbatch run` until all {total:,} messages are consumed (log: {work / 'consumer.log'})")
    with (work / "consumer.log").open("w") as log:
        consumer = subprocess.Popen([str(BIN / "microbatch"), "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    try:
        progress = Progress(TextColumn("consuming"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console)  # fmt: skip
        with progress:
            task = progress.add_task("drain", total=total)
            while True:
                done = sum(stored_positions(database_url, GROUP).values())
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
    database_url: str, expected: dict[str, Any], dead: dict[str, int], seconds: float, produced: int, *, port: int
) -> int:
    checks = compare_totals(database_url, expected)
    want_dead = expected["bad_by_reason"]
    checks.append(Check("dead letters by reason", dead == want_dead, f"{dead} (expected {want_dead})"))
    with psycopg.connect(database_url) as conn:
        counts = {
            table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
            for table in ("transactions", "inventory", "item_sales_daily")
        }
    table = Table(title="microbatch demo", show_header=False)
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
