"""The benchmark's variants: each returns the same figures, measured the same way, checked for correctness.

kafka_ceiling   consume(n) touching every value (and the same plus JSON decoding), no database
pg_ceiling      microbatch's write path fed from pre-decoded rows in memory, no Kafka
naive           per message: INSERT + upserts + COMMIT + synchronous Kafka commit
microbatch      `microbatch run` as a real process, drain mode or steady mode
quixstreams     quixstreams' Application + PostgreSQLSink, in its own virtual environment
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
from confluent_kafka import Consumer

from bench.export import export_tables, write_records
from bench.lab import PARTITIONS, Dataset, Lab
from bench.measure import CpuClock, histogram_quantiles, peak_rss_bytes, wal_bytes
from consumer.workload import InvoiceWorkload
from devstack.verify import compare_totals
from pipeline.decode import Decoder
from pipeline.prepare import Preparer
from pipeline.records import Batch, Record
from pipeline.spec_loader import load_pipeline
from pipeline.target import Target

Figures = dict[str, Any]
MICROBATCH = Path(sys.executable).with_name("microbatch")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*assigned ", re.MULTILINE)


class NoSink:
    """Rejected records are counted, not produced (ceilings measure the write path only)."""

    def __init__(self) -> None:
        self.rejected = 0

    def deliver(self, rejections: Any, resolved: Any) -> None:
        self.rejected += len(rejections)


def _consumer(lab: Lab, topic: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": lab.bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    consumer.subscribe([topic])
    return consumer


def kafka_ceiling(lab: Lab, dataset: Dataset, *, decode: bool) -> Figures:
    """How fast Python can take the messages out of Kafka (and parse them), with nothing else to do."""
    consumer = _consumer(lab, dataset.topic)
    seen, touched, started = 0, 0, 0.0
    clock_before = None
    deadline = time.monotonic() + 600
    loads = orjson.loads
    while seen < dataset.count and time.monotonic() < deadline:
        messages = consumer.consume(1000, 1.0)
        if messages and not started:
            started = time.monotonic()
            clock_before = CpuClock.read(None, lab.postgres_pid, lab.kafka.pid)
            own_before = time.process_time()
        for message in messages:
            value = message.value() or b""
            touched += len(value)
            if decode and value:
                with contextlib.suppress(orjson.JSONDecodeError):
                    loads(value)
        seen += len(messages)
    seconds = time.monotonic() - started
    own = time.process_time() - own_before
    clock_after = CpuClock.read(None, lab.postgres_pid, lab.kafka.pid)
    consumer.close()
    cpu = clock_before.per_event_us(clock_after, seen) if clock_before else {}
    cpu["consumer"] = round(own * 1e6 / max(seen, 1), 2)
    return {
        "events": seen,
        "seconds": round(seconds, 3),
        "events_per_s": round(seen / seconds),
        "cpu_us_per_event": cpu,
        "correct": seen == dataset.count and touched > 0,
    }


def memory_records(dataset: Dataset) -> list[Record]:
    """The dataset's events regenerated in memory (its own generator options: same bytes), as Kafka
    records with coordinates of their own (message n at partition n mod 4, offset n div 4)."""
    messages = InvoiceWorkload(dataset.options).messages()
    return [Record(dataset.topic, n % PARTITIONS, n // PARTITIONS, m.key, m.value) for n, m in enumerate(messages)]


def pg_ceiling(
    lab: Lab, dataset: Dataset, records: list[Record], batch_size: int = 5000, *, export: Path | None = None
) -> Figures:
    """microbatch's whole write path (CAS, COPY, insert-returning, upserts, COMMIT) from rows decoded and
    encoded in memory beforehand: the database's limit, with no client work in the timed loop.

    `records` must be `memory_records(dataset)`. With `export`, the tables and the records written
    (their coordinates are not Kafka's) go there once the run is measured."""
    url = lab.fresh_database()
    target = Target(load_pipeline(), url, group="ceiling")
    target.init_tables()
    preparer = Preparer(target.spec, url)
    batches = []
    positions: dict[tuple[str, int], int | None] = {}
    for start in range(0, len(records), batch_size):
        chunk = sorted(records[start : start + batch_size], key=lambda r: (r.partition, r.offset))
        batch = Batch(chunk, {r.partition_id: positions.get(r.partition_id) for r in chunk})
        positions.update(batch.to_positions)
        batches.append((batch, preparer.prepare(chunk)))  # rows and COPY bytes ready: only database work is timed
    preparer.close()
    wal_before = wal_bytes(url)
    clock_before = CpuClock.read(None, lab.postgres_pid, lab.kafka.pid)
    own_before = time.process_time()
    started = time.monotonic()
    sink = NoSink()
    for batch, decoded in batches:
        target.write(batch, decoded, sink)
    seconds = time.monotonic() - started
    own = time.process_time() - own_before
    clock_after = CpuClock.read(None, lab.postgres_pid, lab.kafka.pid)
    wal = wal_bytes(url) - wal_before
    target.close()
    cpu = clock_before.per_event_us(clock_after, len(records))
    cpu["consumer"] = round(own * 1e6 / len(records), 2)
    correct = all(check.ok for check in compare_totals(url, dataset.expected))
    if export is not None:
        write_records(records, export / "records.jsonl")
        export_tables(url, export, dataset.name)
    return {
        "events": len(records),
        "seconds": round(seconds, 3),
        "events_per_s": round(len(records) / seconds),
        "cpu_us_per_event": cpu,
        "wal_bytes_per_event": round(wal / len(records), 1),
        "correct": correct,
    }


def bad_row_cost(lab: Lab, records: list[Record], rounds: int = 5) -> Figures:
    """A 10,000-row flush with 1 row the database rejects, against a clean one (median of `rounds`)."""
    url = lab.fresh_database()
    target = Target(load_pipeline(), url, group="badrow")
    target.init_tables()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions ADD CONSTRAINT no_cursed CHECK (item_id <> 'item-cursed')")
    decoder = Decoder(load_pipeline())
    clean: list[tuple[float, int]] = []
    dirty: list[tuple[float, int]] = []
    offset = 0
    for n in range(rounds * 2):
        chunk = [
            Record("badrow", 0, offset + i, r.key, r.value)
            for i, r in enumerate(records[n * 10_000 : (n + 1) * 10_000])
        ]
        offset += len(chunk)
        decoded = decoder.decode(chunk)
        if n % 2:
            row = list(decoded.rows[len(decoded.rows) // 3])
            row[4] = "item-cursed"  # a row only the database refuses
            decoded.rows[len(decoded.rows) // 3] = tuple(row)
        stored = target.stored_positions([("badrow", 0)]).get(("badrow", 0))
        started = time.monotonic()
        result = target.write(Batch(chunk, {("badrow", 0): stored}), decoded, NoSink())
        (dirty if n % 2 else clean).append((time.monotonic() - started, result.statements))
    target.close()
    clean_s = sorted(s for s, _ in clean)[len(clean) // 2]
    dirty_s = sorted(s for s, _ in dirty)[len(dirty) // 2]
    return {
        "clean_flush_s": round(clean_s, 4),
        "one_bad_row_flush_s": round(dirty_s, 4),
        "ratio": round(dirty_s / clean_s, 2),
        "statements_with_one_bad_row": dirty[0][1],
    }


def naive(lab: Lab, dataset: Dataset, *, max_seconds: float, export: Path | None = None) -> Figures:
    """One message at a time: decode, INSERT … ON CONFLICT DO NOTHING RETURNING, two upserts, COMMIT,
    then a synchronous Kafka commit. Correct, and as slow as the round trips make it. With `export`,
    its tables go there once the run is measured."""
    url = lab.fresh_database()
    setup = Target(load_pipeline(), url)
    setup.init_tables()
    setup.close()
    decoder = Decoder(load_pipeline())
    consumer = _consumer(lab, dataset.topic)
    insert = (
        "INSERT INTO transactions (event_id, invoice_id, user_id, item_id, quantity, unit_price, occurred_at, "
        "kafka_topic, kafka_partition, kafka_offset) VALUES (%s::uuid, %s, %s, %s, %s, %s::numeric, %s, %s, %s, %s) "
        "ON CONFLICT (event_id) DO NOTHING RETURNING item_id"
    )
    inventory = (
        "INSERT INTO inventory AS t (item_id, quantity, last_event_at) VALUES (%s, %s, %s) ON CONFLICT (item_id) "
        "DO UPDATE SET quantity = t.quantity + excluded.quantity, "
        "last_event_at = GREATEST(t.last_event_at, excluded.last_event_at)"
    )
    daily = (
        "INSERT INTO item_sales_daily AS t (item_id, day, units, revenue, lines) "
        "VALUES (%s, (%s::timestamptz AT TIME ZONE 'UTC')::date, %s, %s::numeric * %s, 1) "
        "ON CONFLICT (item_id, day) DO UPDATE SET units = t.units + excluded.units, "
        "revenue = t.revenue + excluded.revenue, lines = t.lines + 1"
    )
    seen, started = 0, 0.0
    with psycopg.connect(url) as conn:
        deadline = time.monotonic() + max_seconds + 60
        while seen < dataset.count and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error() is not None:
                continue
            if not started:
                started = time.monotonic()
                clock_before = CpuClock.read(None, lab.postgres_pid, lab.kafka.pid)
                own_before = time.process_time()
            record = Record(
                message.topic() or "", message.partition() or 0, message.offset() or 0, message.key(), message.value()
            )
            decoded = decoder.decode([record])
            if decoded.rows:
                _, eid, inv, user, item, qty, price, ts, topic, part, off = decoded.rows[0]
                if conn.execute(insert, (eid, inv, user, item, qty, price, ts, topic, part, off)).fetchone():
                    conn.execute(inventory, (item, qty, ts))
                    conn.execute(daily, (item, ts, qty, price, qty))
            conn.commit()
            consumer.commit(message=message, asynchronous=False)
            seen += 1
            if time.monotonic() - started > max_seconds:
                break
        seconds = time.monotonic() - started
        own = time.process_time() - own_before
        clock_after = CpuClock.read(None, lab.postgres_pid, lab.kafka.pid)  # while its backend still runs
    consumer.close()
    cpu = clock_before.per_event_us(clock_after, seen)
    cpu["consumer"] = round(own * 1e6 / max(seen, 1), 2)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*), (SELECT sum(lines) FROM item_sales_daily) FROM transactions").fetchone()
    rows, lines = (int(row[0]), int(row[1] or 0)) if row else (0, 0)
    if export is not None:
        export_tables(url, export, dataset.name)
    return {
        "events": seen,
        "seconds": round(seconds, 3),
        "events_per_s": round(seen / seconds, 1),
        "cpu_us_per_event": cpu,
        "correct": rows == lines and 0 < rows <= seen,
        "note": f"bounded to {max_seconds:.0f} s",
    }


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
) -> Figures:
    """Drain `dataset` with a real `microbatch run`: events/s from its first poll to its last commit.
    With `export`, its tables go there once the process has stopped."""
    url = lab.fresh_database()
    group = f"mb-{label}-{uuid.uuid4().hex[:6]}"
    pipeline_file = lab.pipeline_file(dataset.topic, group)
    env = _env(lab, url, env_extra)
    _init_db(pipeline_file, env)
    log_path = lab.workdir / f"{group}.log"
    wal_before = wal_bytes(url)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(MICROBATCH), "run", "--pipeline", str(pipeline_file)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + timeout
        while _log_time(log_path.read_text()) is None:
            _alive(process, log_path, deadline)
            time.sleep(0.02)
        clock_before = CpuClock.read(process.pid, lab.postgres_pid, lab.kafka.pid)
        started_at = _log_time(log_path.read_text()) or time.time()
        total = sum(lab.high_watermarks(dataset.topic).values())
        with PositionWatch(url, group) as positions:
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
    checks = compare_totals(url, dataset.expected)
    wal_per_event = round((wal_bytes(url) - wal_before) / dataset.count, 1)
    if export is not None:
        export_tables(url, export, dataset.name)
    return {
        "events": dataset.count,
        "seconds": round(seconds, 3),
        "events_per_s": round(dataset.count / seconds),
        "cpu_us_per_event": clock_before.per_event_us(clock_after, dataset.count),
        "peak_rss_bytes": rss,
        "wal_bytes_per_event": wal_per_event,
        "flush_p50_s": p50,
        "flush_p99_s": p99,
        "correct": all(check.ok for check in checks),
    }


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


def _init_db(pipeline_file: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(MICROBATCH), "init-db", "--pipeline", str(pipeline_file)],
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


def steady(lab: Lab, rate: float, seconds: float, env_extra: dict[str, str], *, max_wait_ms: int = 500) -> Figures:
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
    return {
        "rate": rate,
        "seconds": seconds,
        "events": int(row[2]),
        "p50_latency_s": round(float(row[0]), 3),
        "p99_latency_s": round(float(row[1]), 3),
        "max_lag": max_lag,
        "lag_bounded": max_lag < rate * 2,
    }


def quixstreams(lab: Lab, dataset: Dataset, python: Path, script: Path, *, timeout: float = 900) -> Figures:
    """quixstreams' Application + PostgreSQLSink on the same kind of topic, in its own venv."""
    url = lab.fresh_database()
    result = lab.workdir / f"quix-{uuid.uuid4().hex[:6]}.json"
    clock_before = CpuClock.read(None, lab.postgres_pid, lab.kafka.pid)
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
    clock_after = CpuClock.read(None, lab.postgres_pid, lab.kafka.pid)
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
        "correct": figures["rows"] == figures["events"] - figures.get("skipped", 0),
        "note": "plain INSERTs of raw rows; no deduplication, no aggregates, offsets committed to Kafka",
    }
