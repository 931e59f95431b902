"""The Kafka Connect peer of the benchmark: a standalone Connect 4.1.1 worker running the Debezium JDBC sink 3.3.1.

`run_connect(lab, dataset, mode, batch_size=n)` returns figures like bench.variants.quixstreams'; `prefetch()` (the
bench's set-up) fetches the jars (bench/connect/pom.xml) with Maven once per machine into the devstack cache. The sink
needs schemaful records: `schemaful_copy` re-produces the dataset's VALID events (untimed, once per dataset) to
`<topic>-connect` (4 partitions; source partition, key and order kept) as JsonConverter envelopes: the schema travels
in every message (0.9 KB against 0.2 KB raw). Validity is the project's own invoices decoder (quix_peer.is_valid
mirrors it); invalid events are dropped, duplicates kept: they are the redelivery the sink must survive. Types:
event_id `io.debezium.data.Uuid` (bound as `cast(? as uuid)`), 3 strings, quantity int64, unit_price Connect `Decimal`
(scale 4, base64 of the unscaled bytes), ts `io.debezium.time.ZonedTimestamp` (an ISO-8601 string; Connect's
Timestamp binds as timestamp without time zone). All are carried, into a table made beforehand with microbatch's raw
types (uuid, text x3, numeric(14,4), timestamptz; `ts` is its occurred_at), quantity bigint as quix_peer's (integer).

The sink: the worker's consumer (group connect-<name>, fresh per run, earliest offset) polls up to
consumer.max.poll.records records; JdbcSinkConnectorTask.put() writes every batch.size records and at the end of
each put(): one transaction per write, a JDBC batch of one prepared single-row statement per record (driver
defaults: no reWriteBatchedInserts, no COPY). insert mode: plain INSERTs, into a table without key (the duplicates
would violate one; they become rows). upsert mode (primary.key.mode=record_value, primary.key.fields=event_id):
`INSERT ... ON CONFLICT (event_id) DO UPDATE` on a PRIMARY KEY (event_id), its way to survive redelivery.
At-least-once: offsets live in Kafka, committed by the worker every 60 s (offset.flush.interval.ms) after a flush; a
crash replays the rest (duplicate rows, or rows overwritten). No aggregates, no dead letters (errors.tolerance=none:
one bad record fails the task until restarted, hence the filter above). Every setting is its default except
batch.size and consumer.max.poll.records (equal: a write is capped by a poll), and what it takes to run: topics,
collection.name.format (Debezium 3's table.name.format), connection.*, insert.mode, primary.key.*,
schema.evolution=none, converters (keys: StringConverter), plugin.path, the REST port, a fresh offsets file. JVM
options: connect-standalone.sh's (heap 256 MB..2 GB, G1). Start-up (15-30 s here, 6 s of it plugin scanning) is not
timed; JIT compilation is: at 100k events the C2 compiler threads burn twice the task thread's CPU.

Timing: one monitoring connection (parallel workers off) polls `SELECT count(*)` every POLL_S (0.2 s) from the JVM's
start. The window runs from the first poll that sees rows to the last that sees the table change: insert mode, the
count reaching the messages; upsert mode, the count reaching the distinct event_ids, then `max(xmin)` (trailing
duplicates only rewrite rows) until the table's statistics (n_tup_ins + n_tup_upd; an idle backend flushes them
within 10 s, untimed) count every message. Rows committed before the first sighting are left out: events_per_s =
(messages - rows first seen) / seconds, and CPU per event (JVM; PostgreSQL minus the monitor's backend; broker, read
at those two polls) divides by the same number.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, NamedTuple

import orjson
import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql

from bench.lab import PARTITIONS, Dataset, Lab
from bench.measure import CpuClock, cpu_seconds, peak_rss_bytes, wal_bytes
from consumer.produce import ensure_topic
from devstack import DevstackError
from devstack.kafka_server import cache_root
from devstack.process import free_port, terminate
from pipeline.decode import Decoder
from pipeline.records import Record
from pipeline.spec_loader import load_pipeline

CONNECT_VERSION = "4.1.1"
DEBEZIUM_VERSION = "3.3.1.Final"
POM = Path(__file__).with_name("connect") / "pom.xml"
TABLE = "connect_lines"
COLUMNS = ("event_id uuid NOT NULL, invoice_id text, user_id text, item_id text, quantity bigint, "
           "unit_price numeric(14,4), ts timestamptz")  # fmt: skip
SCALE = 4
SCHEMA = {
    "type": "struct",
    "name": "bench.connect.InvoiceLine",
    "optional": False,
    "fields": [
        {"field": "event_id", "type": "string", "optional": False, "name": "io.debezium.data.Uuid", "version": 1},
        *({"field": name, "type": "string", "optional": False} for name in ("invoice_id", "user_id", "item_id")),
        {"field": "quantity", "type": "int64", "optional": False},
        {"field": "unit_price", "type": "bytes", "optional": False, "name": "org.apache.kafka.connect.data.Decimal",
         "version": 1, "parameters": {"scale": str(SCALE), "connect.decimal.precision": "14"}},
        {"field": "ts", "type": "string", "optional": False, "name": "io.debezium.time.ZonedTimestamp", "version": 1},
    ],
}  # fmt: skip
ENVELOPE_HEAD = b'{"schema":' + orjson.dumps(SCHEMA) + b',"payload":'
JVM_OPTIONS = (
    "-Xms256M", "-Xmx2G", "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
)  # fmt: skip
LOG4J = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.reflections=ERROR
"""
POLL_S = 0.2
STATS_WAIT_S = 30.0  # upsert mode: idle backends flush their statistics within 10 s (PGSTAT_IDLE_INTERVAL)
STOP_GRACE_S = 20.0
STATS = "SELECT coalesce(n_tup_ins + n_tup_upd, 0) FROM pg_stat_user_tables WHERE relid = %s::regclass"
COUNT = "SELECT count(*) FROM connect_lines"  # TABLE
NEWEST_XMIN = "SELECT max(xmin::text::bigint) FROM connect_lines"
CHECKSUMS = (
    "SELECT count(*), count(DISTINCT event_id), coalesce(sum(quantity), 0), coalesce(sum(unit_price), 0), "
    "coalesce(sum((extract(epoch FROM ts) * 1000)::bigint), 0) FROM connect_lines"
)


def prefetch() -> Path:
    """The cached worker classpath (lib/) and plugin directory (plugins/), fetched with Maven on first use: what
    the bench's set-up calls. Raises DevstackError with one sentence (and Maven's last lines) when java or mvn is
    missing or Maven fails (no network)."""
    if shutil.which("java") is None:
        raise DevstackError("Java is not installed: Kafka Connect needs OpenJDK 17 or newer.")
    home = cache_root() / f"connect-{CONNECT_VERSION}-debezium-{DEBEZIUM_VERSION.removesuffix('.Final')}"
    if (home / ".complete").exists():
        return home
    if shutil.which("mvn") is None:
        raise DevstackError("Maven (mvn) is not installed: install it (apt-get install maven) to fetch Kafka Connect.")
    tmp = home.with_name(home.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    argv = [
        "mvn", "-B", "-q", "-f", str(POM), "dependency:copy-dependencies@lib", "dependency:unpack@plugin",
        f"-Dconnect.lib={tmp / 'lib'}", f"-Dconnect.plugins={tmp / 'plugins'}", f"-Dconnect.markers={tmp / 'markers'}",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900)
    if result.returncode != 0 or not (tmp / "plugins" / "debezium-connector-jdbc").is_dir():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise DevstackError(f"could not fetch Kafka Connect and the Debezium JDBC sink with Maven:\n{tail}")
    shutil.rmtree(tmp / "markers", ignore_errors=True)
    (tmp / ".complete").write_text(f"{CONNECT_VERSION} {DEBEZIUM_VERSION}\n")
    shutil.rmtree(home, ignore_errors=True)
    tmp.rename(home)
    return home


def connect_libdir() -> Path:
    return prefetch() / "lib"


def connect_plugin_dir() -> Path:
    return prefetch() / "plugins"


class Checksums(NamedTuple):
    """What CHECKSUMS returns: rows, distinct event_ids, sum(quantity), sum(unit_price), sum(ts in ms)."""

    rows: int
    distinct: int
    quantity: int
    unit_price: Decimal
    ts_millis: int


@dataclass(frozen=True)
class SchemafulTopic:
    """The schemaful copy of a dataset's valid events, and what the table must hold after each mode."""

    topic: str
    messages: int  # valid messages, duplicates included: insert mode's rows
    distinct: int  # distinct event_ids: upsert mode's rows
    expected: dict[str, Checksums]  # "insert" / "upsert"


_COPIES: dict[str, SchemafulTopic] = {}


def schemaful_copy(lab: Lab, dataset: Dataset, *, timeout: float = 600) -> SchemafulTopic:
    """Produce the dataset's valid events as JsonConverter envelopes to `<topic>-connect` (untimed, once per
    dataset); its `messages` and `distinct` (event_ids) are the rows of insert and upsert mode."""
    if dataset.topic in _COPIES:
        return _COPIES[dataset.topic]
    topic = f"{dataset.topic}-connect"
    ensure_topic(AdminClient({"bootstrap.servers": lab.bootstrap}), topic, PARTITIONS)
    decoder = Decoder(load_pipeline(dataset.pipeline))
    group = f"connect-copy-{uuid.uuid4().hex[:6]}"
    consumer = Consumer({"bootstrap.servers": lab.bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.assign([TopicPartition(dataset.topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    producer = Producer(
        {"bootstrap.servers": lab.bootstrap, "enable.idempotence": True, "linger.ms": 20, "compression.type": "lz4"}
    )
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err.str())

    total, seen = sum(lab.high_watermarks(dataset.topic).values()), 0
    every: list[tuple[int, Decimal, int]] = []
    firsts: dict[str, tuple[int, Decimal, int]] = {}
    deadline = time.monotonic() + timeout
    try:
        while seen < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"read {seen} of {total} messages of {dataset.topic} in {timeout:.0f} s")
            batch = [m for m in consumer.consume(2000, 1.0) if m.error() is None]
            seen += len(batch)
            records = [Record(dataset.topic, m.partition() or 0, m.offset() or 0, m.key(), m.value()) for m in batch]
            decoded = decoder.decode(records)
            for row, index in zip(decoded.rows, decoded.row_records, strict=True):
                value, sums = _envelope(row[1:8])
                while True:
                    try:
                        record = records[index]
                        producer.produce(topic, value, record.key, partition=record.partition, on_delivery=delivered)
                        break
                    except BufferError:
                        producer.poll(0.05)
                producer.poll(0)
                every.append(sums)
                firsts.setdefault(row[1], sums)
        if producer.flush(60) or failures:
            raise RuntimeError(f"producing {topic} failed: {failures[0] if failures else 'not flushed in 60 s'}")
    finally:
        consumer.close()
    expected = {"insert": _checksums(every, len(firsts)), "upsert": _checksums(list(firsts.values()), len(firsts))}
    copy = _COPIES[dataset.topic] = SchemafulTopic(topic, len(every), len(firsts), expected)
    return copy


def _envelope(fields: tuple[Any, ...]) -> tuple[bytes, tuple[int, Decimal, int]]:
    """A decoded row's fields as a JsonConverter envelope, and its (quantity, unit_price, ts in ms)."""
    quantity, price, ts = fields[4:7]
    unscaled = int(Decimal(price).scaleb(SCALE))  # exact: the decoder checked the scale
    payload = dict(zip(("event_id", "invoice_id", "user_id", "item_id", "quantity"), fields[:5], strict=True))
    payload["unit_price"] = base64.b64encode(
        unscaled.to_bytes(unscaled.bit_length() // 8 + 1, "big", signed=True)
    ).decode()
    payload["ts"] = ts.astimezone(UTC).isoformat()
    return ENVELOPE_HEAD + orjson.dumps(payload) + b"}", (quantity, Decimal(price), round(ts.timestamp() * 1000))


def _checksums(rows: list[tuple[int, Decimal, int]], distinct: int) -> Checksums:
    quantity, price, millis = (sum(column) for column in zip(*rows, strict=True)) if rows else (0, 0, 0)
    return Checksums(len(rows), distinct, int(quantity), Decimal(price), int(millis))


@dataclass(frozen=True)
class Run:
    """One run's names and settings."""

    mode: Literal["insert", "upsert"]
    batch_size: int
    name: str = field(default_factory=lambda: f"bench-connect-{uuid.uuid4().hex[:6]}")
    port: int = field(default_factory=free_port)  # the worker's REST listener


def run_connect(
    lab: Lab, dataset: Dataset, mode: Literal["insert", "upsert"], *, batch_size: int, timeout: float = 900
) -> dict[str, Any]:
    """Drain the schemaful copy of `dataset` with a fresh standalone worker and sink (module docstring).

    Raises RuntimeError (with the worker log's tail) when the worker exits, its task fails or `timeout` passes.
    """
    home, copy, run = prefetch(), schemaful_copy(lab, dataset), Run(mode, batch_size)
    url = lab.fresh_database()
    with psycopg.connect(url) as conn:
        key = ", PRIMARY KEY (event_id)" if mode == "upsert" else ""  # insert mode: duplicates would violate one
        conn.execute(sql.SQL(f"CREATE TABLE {TABLE} ({COLUMNS}{key})"))
    argv = _write_config(lab, url, home, copy.topic, run)
    log_path = lab.workdir / f"{run.name}.log"
    wal_before = wal_bytes(url)
    started = time.monotonic()
    with log_path.open("w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        with closing(TableWatch(lab, url, process.pid)) as watch:
            target = copy.messages if mode == "insert" else copy.distinct
            first, (end_at, end_clock) = watch.drain(target, copy.messages, lambda rows: _check(process, log_path,
                                                     started + timeout, run, rows))  # fmt: skip
            rss = peak_rss_bytes(process.pid)
        wal_per_event = round((wal_bytes(url) - wal_before) / copy.messages, 1)
    finally:
        terminate(process.pid, timeout=STOP_GRACE_S, reap=process.poll)
        process.wait(timeout=10)
    (start_at, start_clock), first_rows = first
    seconds, timed = end_at - start_at, copy.messages - first_rows
    with psycopg.connect(url) as conn:
        row = conn.execute(CHECKSUMS).fetchone()
    got = Checksums(int(row[0]), int(row[1]), int(row[2]), Decimal(row[3]), int(row[4])) if row else None
    cpu = start_clock.per_event_us(end_clock, timed)
    cpu["connect"] = cpu.pop("consumer")
    ok = got == copy.expected[mode]
    return {
        "mode": mode, "batch_size": batch_size, "events": copy.messages, "rows": got.rows if got else 0,
        "skipped_invalid": dataset.count - copy.messages, "timed_events": timed, "seconds": round(seconds, 3),
        "events_per_s": round(timed / seconds) if seconds > 0 else None, "wall_seconds": round(end_at - started, 3),
        "startup_seconds": round(start_at - started, 3), "cpu_us_per_event": cpu, "peak_rss_bytes": rss,
        "wal_bytes_per_event": wal_per_event, "correct": ok,
        **({} if ok else {"failed_checks": [f"table {got} != produced {copy.expected[mode]}"]}),
        "note": f"Kafka Connect {CONNECT_VERSION} + Debezium JDBC sink {DEBEZIUM_VERSION}, {mode} mode: single-row "
        + ("INSERT ... ON CONFLICT (event_id) DO UPDATE" if mode == "upsert" else "INSERTs into a table without key")
        + " in JDBC batches, raw rows only; at-least-once, offsets in Kafka; no aggregates, no dead letters; "
        "valid events only, re-produced as schemaful JSON (untimed); defaults but batch.size and "
        "consumer.max.poll.records (equal, as a write is capped by a poll)",
    }  # fmt: skip


Reading = tuple[float, CpuClock]


class TableWatch:
    """The one monitoring connection (parallel workers off) and the CPU clocks read at the polls that matter."""

    def __init__(self, lab: Lab, url: str, jvm: int) -> None:
        self._lab, self._jvm = lab, jvm
        self._conn = psycopg.connect(url, autocommit=True)
        self._conn.execute("SET max_parallel_workers_per_gather = 0")
        self._backend = int(self._one("SELECT pg_backend_pid()"))

    def close(self) -> None:
        self._conn.close()

    def _one(self, query: str, *params: object) -> Any:
        row = self._conn.execute(query, params or None).fetchone()
        return row[0] if row else None

    def reading(self) -> Reading:
        """Now, and the CPU seconds of the JVM, PostgreSQL without this connection's backend, and the broker."""
        clock = CpuClock.read(self._jvm, self._lab.postgres_pid, self._lab.kafka.pid)
        clock.postgres -= cpu_seconds(self._backend)
        return time.monotonic(), clock

    def drain(self, target: int, messages: int, check: Callable[[int], None]) -> tuple[tuple[Reading, int], Reading]:
        """Poll until the table holds `target` rows (upsert mode: and every message was written); returns the
        first poll that saw rows (with their count) and the last one that saw the table change."""
        first: tuple[Reading, int] | None = None
        last: Reading | None = None
        rows, xmin, next_check, reached = 0, 0, 0.0, 0.0
        while True:
            if time.monotonic() >= next_check:
                check(rows)
                next_check = time.monotonic() + 1.0  # the REST status: once a second
            if (count := int(self._one(COUNT))) != rows:
                last, rows = self.reading(), count
                first = first or (last, rows)
            if first is not None and last is not None and rows >= target:
                if target == messages:  # insert mode (or no duplicates): every message is a row
                    return first, last
                # upsert mode: trailing duplicates only move the newest xmin, until the statistics count every message
                newest = int(self._one(NEWEST_XMIN) or 0)
                if reached and newest != xmin:
                    last = self.reading()
                reached, xmin = reached or time.monotonic(), newest
                if int(self._one(STATS, TABLE) or 0) >= messages or time.monotonic() - reached > STATS_WAIT_S:
                    return first, last
            time.sleep(POLL_S)


def _write_config(lab: Lab, url: str, home: Path, topic: str, run: Run) -> list[str]:
    """worker.properties, sink.properties and a log4j file under lab.workdir; returns the JVM's argv."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    worker = {
        "bootstrap.servers": lab.bootstrap, "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter", "value.converter.schemas.enable": "true",
        "offset.storage.file.filename": str(lab.workdir / f"{run.name}.offsets"), "plugin.path": str(home / "plugins"),
        "listeners": f"http://127.0.0.1:{run.port}", "consumer.max.poll.records": str(run.batch_size),
    }  # fmt: skip
    sink = {
        "name": run.name, "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector", "topics": topic,
        "connection.url": f"jdbc:postgresql://{info['host']}:{info['port']}/{info['dbname']}",
        "connection.username": str(info.get("user") or "postgres"), "connection.password": info.get("password") or "",
        "insert.mode": run.mode,
        **({"primary.key.mode": "record_value", "primary.key.fields": "event_id"} if run.mode == "upsert" else {}),
        "schema.evolution": "none", "collection.name.format": TABLE, "batch.size": str(run.batch_size),
    }  # fmt: skip
    paths = []
    for suffix, settings in (("worker", worker), ("sink", sink)):
        path = lab.workdir / f"{run.name}.{suffix}.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        paths.append(str(path))
    (log4j := lab.workdir / f"{run.name}.log4j.properties").write_text(LOG4J)
    (tmpdir := lab.workdir / f"{run.name}.tmp").mkdir(exist_ok=True)  # what the JVM unpacks stays out of /tmp
    options = [*JVM_OPTIONS, f"-Djava.io.tmpdir={tmpdir}", f"-Dlog4j.configuration=file:{log4j}"]
    main = "org.apache.kafka.connect.cli.ConnectStandalone"
    return [shutil.which("java") or "java", *options, "-cp", f"{home / 'lib'}/*", main, *paths]


def _check(process: subprocess.Popen[bytes], log: Path, deadline: float, run: Run, rows: int) -> None:
    """Raise when the worker exited, its connector or task failed (REST status), or the deadline passed."""
    if process.poll() is not None or time.monotonic() > deadline:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])[-1500:]
        why = f"exited early ({process.returncode})" if process.returncode is not None else "did not finish in time"
        raise RuntimeError(f"the Connect worker {why}, {rows} rows written: {tail}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{run.port}/connectors/{run.name}/status", timeout=2) as reply:
            status = json.load(reply)
    except (OSError, ValueError):
        return  # the REST server is not up yet
    for state in [status.get("connector", {}), *status.get("tasks", [])]:
        if state.get("state") == "FAILED":  # the trace's exceptions and causes, without their stack frames
            causes = [line for line in str(state.get("trace", "")).splitlines() if not line.startswith("\t")]
            raise RuntimeError(f"the Connect sink failed: {' / '.join(causes)[:1200]}")
