"""The benchmark's variants: each returns the same figures, measured the same way, checked for correctness.

(the ceilings and the naive floor: bench/ceilings.py)
microbatch      `microbatch run` as a real process, drain mode or steady mode
quixstreams     quixstreams' Application + PostgreSQLSink, in its own virtual environment
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.defaults import WINDOW_WAIT_MS
from bench.export import export_tables
from bench.lab import Dataset, Lab
from bench.measure import CpuClock, histogram_quantiles, peak_rss_bytes, wal_bytes
from devstack.verify import Check, compare_totals, compare_vendor_totals

Figures = dict[str, Any]
MICROBATCH = Path(sys.executable).with_name("microbatch")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*assigned ", re.MULTILINE)


def _log_time(log: str) -> float | None:
    found = LOG_TIME.search(log)
    if not found:
        return None
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run_microbatch(
    lab: Lab,
    dataset: Dataset,
    env_extra: dict[str, str],
    *,
    label: str,
    timeout: float = 900,
    export: Path | None = None,
    binary: Path = MICROBATCH,
    prepare: Callable[[str], dict[str, Any]] | None = None,
    grant_to: str | None = None,
    consumer_env: Callable[[str], dict[str, str]] | None = None,
    observe: Callable[[int], AbstractContextManager[object]] | None = None,
) -> Figures:
    """Drain `dataset` with a real `microbatch run` (of `binary`: another checkout's, to compare two
    commits) on the dataset's pipeline: events/s from its first poll to its last commit. With `export`,
    its tables go there once the process has stopped. `prepare(url)`, if given, runs after init-db and
    before the consumer starts (untimed); the figures it returns are reported with the run's. `grant_to`:
    init-db grants that runtime role; `consumer_env(url)`: what the consumer's environment (not init-db's)
    gets on top, e.g. the runtime role's URL and the broker's SASL_SSL listener. `observe(pid)`: a context
    held around the drain, from the first poll to the last commit (bench/profile.py samples it)."""
    url = lab.fresh_database()
    group = f"mb-{label}-{uuid.uuid4().hex[:6]}"
    pipeline_file = lab.pipeline_file(dataset.topic, group, pipeline=dataset.pipeline)
    env = _env(lab, url, env_extra)
    _init_db(pipeline_file, env, binary, *(("--grant-to", grant_to) if grant_to else ()))
    prepared = prepare(url) if prepare is not None else {}
    log_path = lab.workdir / f"{group}.log"
    wal_before = wal_bytes(url)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(binary), "run", "--pipeline", str(pipeline_file)],
            env={**env, **(consumer_env(url) if consumer_env is not None else {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while _log_time(log_path.read_text()) is None:
            _alive(process, log_path, deadline)
            time.sleep(0.02)
        clock_before = CpuClock.read(process.pid, lab.postgres_pid, lab.kafka.pid)
        started_at = _log_time(log_path.read_text()) or time.time()
        total = sum(lab.high_watermarks(dataset.topic).values())
        with PositionWatch(url, group) as positions, (observe or _unobserved)(process.pid):
            while positions.total() < total:
                _alive(process, log_path, deadline)
                time.sleep(0.02)
        finished_at = time.time()
        clock_after = CpuClock.read(process.pid, lab.postgres_pid, lab.kafka.pid)
        rss = peak_rss_bytes(process.pid)
        port = int(re.findall(r"on port (\d+)", log_path.read_text())[0])
        p50, p99 = histogram_quantiles(port, "microbatch_flush_duration_seconds")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    seconds = finished_at - started_at
    failed = [f"{check.name}: {check.detail}" for check in verify(url, dataset) if not check.ok]
    wal_per_event = round((wal_bytes(url) - wal_before) / dataset.count, 1)
    if export is not None:
        export_tables(url, export, dataset.name, dataset.pipeline)
    return {
        "events": dataset.count,
        "seconds": round(seconds, 3),
        "events_per_s": round(dataset.count / seconds),
        "cpu_us_per_event": clock_before.per_event_us(clock_after, dataset.count),
        "peak_rss_bytes": rss,
        "wal_bytes_per_event": wal_per_event,
        "flush_p50_s": p50,
        "flush_p99_s": p99,
        "correct": not failed,
        **({"failed_checks": failed} if failed else {}),
        **prepared,
    }


def _unobserved(pid: int) -> AbstractContextManager[object]:
    return nullcontext()


def verify(url: str, dataset: Dataset) -> list[Check]:
    """The tables against the dataset's expected totals: by item id, or by natural key for vendor-invoices."""
    if dataset.pipeline == "vendor-invoices":
        return compare_vendor_totals(url, dataset.expected)
    return compare_totals(url, dataset.expected)


def _env(lab: Lab, url: str, extra: dict[str, str]) -> dict[str, str]:
    import os  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROBATCH_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=lab.bootstrap,
        DATABASE_URL=url,
        MICROBATCH_METRICS_PORT="0",
        MICROBATCH_LOG_LEVEL="INFO",
        **extra,
    )
    return env


def _init_db(pipeline_file: Path, env: dict[str, str], binary: Path = MICROBATCH, *extra: str) -> None:
    result = subprocess.run(
        [str(binary), "init-db", "--pipeline", str(pipeline_file), *extra],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"init-db failed: {result.stderr[-500:]}")


class PositionWatch:
    """Sums a group's stored positions through ONE open connection.

    The drain loop polls every 20 ms; a new connection per poll would fork a PostgreSQL backend
    50 times a second on the two cores being measured.
    """

    def __init__(self, url: str, group: str) -> None:
        self._conn = psycopg.connect(url, autocommit=True)
        self._group = group

    def __enter__(self) -> PositionWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.close()

    def total(self) -> int:
        """Sum of next_offset over the group's partitions (0 before the first flush)."""
        row = self._conn.execute(
            "SELECT COALESCE(sum(next_offset), 0) FROM microbatch_offsets WHERE consumer_group = %s", (self._group,)
        ).fetchone()
        return int(row[0]) if row else 0


def _alive(process: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    if process.poll() is not None:
        raise RuntimeError(f"microbatch exited early ({process.returncode}): {log.read_text()[-1500:]}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"microbatch did not finish in time: {log.read_text()[-1500:]}")


def steady(
    lab: Lab, rate: float, seconds: float, env_extra: dict[str, str], *, max_wait_ms: int = WINDOW_WAIT_MS
) -> Figures:
    """A producer at a fixed rate; end-to-end latency = transaction start of the flush - Kafka timestamp."""
    url = lab.fresh_database()
    topic = lab.empty_topic(f"steady{int(rate)}")
    group = f"steady-{uuid.uuid4().hex[:6]}"
    pipeline_file = lab.pipeline_file(topic, group, with_kafka_timestamp=True)
    env = _env(lab, url, {"MICROBATCH_MAX_WAIT_MS": str(max_wait_ms), **env_extra})
    _init_db(pipeline_file, env)
    log_path = lab.workdir / f"{group}.log"
    with log_path.open("w") as log:
        consumer = subprocess.Popen(
            [str(MICROBATCH), "run", "--pipeline", str(pipeline_file)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    max_lag = 0
    try:
        deadline = time.monotonic() + 120
        while _log_time(log_path.read_text()) is None:
            _alive(consumer, log_path, deadline)
            time.sleep(0.05)
        count = int(rate * seconds)
        expected_file = lab.workdir / f"{group}.expected.json"
        producer = subprocess.Popen(
            [
                str(MICROBATCH),
                "produce",
                "--pipeline",
                str(pipeline_file),
                "--count",
                str(count),
                "--rate",
                str(rate),
                "--seed",
                "99",
                "--partitions",
                "4",
                "--expected",
                str(expected_file),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with PositionWatch(url, group) as positions:
            while producer.poll() is None:
                lag = sum(lab.high_watermarks(topic).values()) - positions.total()
                max_lag = max(max_lag, lag)
                time.sleep(0.5)
            total = sum(lab.high_watermarks(topic).values())
            deadline = time.monotonic() + 60
            while positions.total() < total:
                _alive(consumer, log_path, deadline)
                time.sleep(0.05)
    finally:
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(timeout=60)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l), percentile_cont(0.99) WITHIN GROUP (ORDER BY l), "
            "count(*) FROM (SELECT extract(epoch FROM ingested_at - kafka_ts) AS l FROM transactions) s"
        ).fetchone()
    if row is None or row[0] is None:
        raise RuntimeError("steady mode wrote no rows")
    # Latencies count only if the run wrote what it was sent: the tables against the expected totals.
    if producer.returncode != 0 or not expected_file.exists():
        failed = [f"the producer failed (exit {producer.returncode}): nothing to check the tables against"]
    else:
        expected = json.loads(expected_file.read_text())
        failed = [f"{check.name}: {check.detail}" for check in compare_totals(url, expected) if not check.ok]
    return {
        "rate": rate,
        "seconds": seconds,
        "events": int(row[2]),
        "p50_latency_s": round(float(row[0]), 3),
        "p99_latency_s": round(float(row[1]), 3),
        "max_lag": max_lag,
        "lag_bounded": max_lag < rate * 2,
        "correct": not failed,
        **({"failed_checks": failed} if failed else {}),
    }


def quixstreams(lab: Lab, dataset: Dataset, python: Path, script: Path, *, timeout: float = 900) -> Figures:
    """quixstreams' Application + PostgreSQLSink on the same kind of topic, in its own venv."""
    url = lab.fresh_database()
    result = lab.workdir / f"quix-{uuid.uuid4().hex[:6]}.json"
    clock_before, wal_before = CpuClock.read(None, lab.postgres_pid, lab.kafka.pid), wal_bytes(url)
    process = subprocess.run(
        [
            str(python),
            "-W",
            "ignore",
            str(script),
            "--bootstrap",
            lab.bootstrap,
            "--database-url",
            url,
            "--topic",
            dataset.topic,
            "--group",
            f"quix-{uuid.uuid4().hex[:6]}",
            "--table",
            "quix_lines",
            "--expected-count",
            str(dataset.count),
            "--timeout",
            str(timeout),
            "--result",
            str(result),
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        check=False,
    )
    clock_after, wal = CpuClock.read(None, lab.postgres_pid, lab.kafka.pid), wal_bytes(url) - wal_before
    if process.returncode != 0:
        return {"error": (process.stderr or process.stdout)[-800:], "correct": False}
    figures: Figures = json.loads(result.read_text())
    cpu = clock_before.per_event_us(clock_after, dataset.count)
    cpu.pop("consumer", None)
    return {
        "events": figures["events"],
        "seconds": figures["seconds"],
        "events_per_s": round(figures["events_per_s"]),
        "cpu_us_per_event": cpu,
        "wal_bytes_per_event": round(wal / max(figures["events"], 1), 1),
        "correct": figures["rows"] == figures["events"] - figures.get("skipped", 0),
        "note": "plain INSERTs of raw rows; no deduplication, no aggregates, offsets committed to Kafka",
    }
