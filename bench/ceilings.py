"""The benchmark's reference points: what the hardware allows and what the naive way gets.

kafka_ceiling   consume(n) touching every value (and the same plus JSON decoding), no database
pg_ceiling      microbatch's write path fed from pre-decoded rows in memory, no Kafka
raw_ingest      the same rows binary-COPYed straight into the raw table: the physical ceiling
bad_row_cost    a flush with one row the database rejects, against a clean one
naive           per message: INSERT + upserts + COMMIT + synchronous Kafka commit
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
from confluent_kafka import Consumer
from psycopg import sql

from bench.defaults import WINDOW_RECORDS
from bench.export import export_tables, write_records
from bench.lab import PARTITIONS, Dataset, Lab
from bench.measure import CpuClock, wal_bytes
from consumer.workload import InvoiceWorkload
from devstack.verify import compare_totals, transaction_checks
from pipeline.copydata import encode_copy_data
from pipeline.decode import Decoder
from pipeline.prepare import Preparer
from pipeline.records import Batch, Record
from pipeline.rejects import RejectSink
from pipeline.spec_loader import load_pipeline
from pipeline.sqlplan import KAFKA_PREFIX
from pipeline.target import Target

Figures = dict[str, Any]


class NoSink(RejectSink):
    """Rejected records are counted, not produced (ceilings measure the write path only)."""

    def __init__(self) -> None:
        self.rejected = 0

    def deliver(self, rejections: Any, resolved: Any) -> None:
        self.rejected += len(rejections)


def _consumer(lab: Lab, topic: str, on_assign: Callable[[Consumer, list[Any]], None] | None = None) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": lab.bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    if on_assign is None:
        consumer.subscribe([topic])
    else:
        consumer.subscribe([topic], on_assign=on_assign)
    return consumer


@dataclass
class _Start:
    """The clocks at the consumer's first assignment: from then on librdkafka fetches in the background,
    so a clock started at the first message would leave out what it prefetched meanwhile (one run
    measured 1.3 million messages/s that way), and microbatch's own clock starts at its assignment too."""

    at: float = 0.0
    cpu: CpuClock | None = None
    own: float = 0.0

    def assigned(self, lab: Lab) -> Callable[[Consumer, list[Any]], None]:
        def record(consumer: Consumer, partitions: list[Any]) -> None:
            if not self.at:
                self.at, self.own = time.monotonic(), time.process_time()
                self.cpu = CpuClock.read(None, lab.postgres_pid, lab.kafka.pid)

        return record


def kafka_ceiling(lab: Lab, dataset: Dataset, *, decode: bool) -> Figures:
    """How fast Python can take the messages out of Kafka (and parse them), with nothing else to do."""
    start = _Start()
    consumer = _consumer(lab, dataset.topic, start.assigned(lab))
    seen, touched = 0, 0
    deadline = time.monotonic() + 600
    loads = orjson.loads
    while seen < dataset.count and time.monotonic() < deadline:
        messages = consumer.consume(1000, 1.0)
        for message in messages:
            value = message.value() or b""
            touched += len(value)
            if decode and value:
                with contextlib.suppress(orjson.JSONDecodeError):
                    loads(value)
        seen += len(messages)
    seconds = time.monotonic() - start.at
    own = time.process_time() - start.own
    clock_after = CpuClock.read(None, lab.postgres_pid, lab.kafka.pid)
    consumer.close()
    cpu = start.cpu.per_event_us(clock_after, seen) if start.cpu else {}
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


def windows(records: list[Record], batch_size: int) -> list[Batch]:
    """`records` in windows of `batch_size`, each ordered by partition then offset, as the consumer
    hands them over: each window's stored positions are where the one before it left them."""
    out: list[Batch] = []
    positions: dict[tuple[str, int], int | None] = {}
    for start in range(0, len(records), batch_size):
        chunk = sorted(records[start : start + batch_size], key=lambda r: (r.partition, r.offset))
        batch = Batch(chunk, {r.partition_id: positions.get(r.partition_id) for r in chunk})
        positions.update(batch.to_positions)
        out.append(batch)
    return out


def pg_ceiling(
    lab: Lab, dataset: Dataset, records: list[Record], batch_size: int = WINDOW_RECORDS, *, export: Path | None = None
) -> Figures:
    """microbatch's whole write path (CAS, COPY, insert-returning, upserts, COMMIT) from rows decoded and
    encoded in memory beforehand: the database's limit, with no client work in the timed loop.

    `records` must be `memory_records(dataset)`. With `export`, the tables and the records written
    (their coordinates are not Kafka's) go there once the run is measured."""
    url = lab.fresh_database()
    target = Target(load_pipeline(), url, group="ceiling")
    target.init_tables()
    preparer = Preparer(target.spec, url)
    # Rows and COPY bytes made ready first: only the database's work is timed.
    batches = [(batch, preparer.prepare(batch.records)) for batch in windows(records, batch_size)]
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


def raw_ingest_ceiling(
    lab: Lab, dataset: Dataset, records: list[Record], batch_size: int = WINDOW_RECORDS, *, export: Path | None = None
) -> Figures:
    """The true physical ceiling: the rows microbatch would insert (each valid event's first copy),
    binary-COPYed straight into the same raw table (its primary key and columns, ingested_at by its
    default), one transaction per `batch_size` events: no staging table, no dedupe, no summaries, no
    positions. Decoded and encoded beforehand; only the COPYs and COMMITs are timed. events/s counts
    every event of the dataset (duplicates and invalid ones too), as microbatch's rate does.

    `records` must be `memory_records(dataset)`. With `export`, the records and the final tables are
    written there afterwards (bench/export.py; its summaries stay empty)."""
    url = lab.fresh_database()
    target = Target(load_pipeline(), url, group="raw-ceiling")
    target.init_tables()
    plan, raw = target.plan, target.spec.raw
    columns = plan.insert_columns
    where = {name: index for index, name in enumerate(plan.staging_columns)}
    sources = [where[raw.columns[c].field or f"{KAFKA_PREFIX}{raw.columns[c].kafka}"] for c in columns]
    key = columns.index(raw.dedupe_key[0])  # the invoice pipeline's: event_id
    target.close()
    with psycopg.connect(url, autocommit=True) as conn:
        types: dict[str, str] = dict(conn.execute(
            "SELECT column_name, udt_name FROM information_schema.columns WHERE table_name = %s", (raw.table,)
        ).fetchall())  # fmt: skip
        parsed = {"uuid": uuid.UUID, "numeric": Decimal}
        casts = [parsed.get(types[c]) for c in columns]
        preparer, seen, chunks = Preparer(load_pipeline(), url), set(), []
        for start in range(0, len(records), batch_size):
            rows = []
            for staged in preparer.decode(records[start : start + batch_size]).rows:
                values = zip((staged[i] for i in sources), casts, strict=True)
                row = tuple(v if cast is None else cast(v) for v, cast in values)
                if row[key] not in seen:  # microbatch inserts an event's first copy only
                    seen.add(row[key])
                    rows.append(row)
            chunks.append(encode_copy_data(conn.cursor(), [types[c] for c in columns], rows))
        preparer.close()
        copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            plan.qualified(raw.table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        wal_before = wal_bytes(url)
        clock_before = CpuClock.read(None, lab.postgres_pid, lab.kafka.pid)
        own_before = time.process_time()
        started = time.monotonic()
        for data in chunks:
            with conn.transaction(), conn.cursor().copy(copy) as writer:
                writer.write(data or b"")
        seconds = time.monotonic() - started
        own = time.process_time() - own_before
        clock_after = CpuClock.read(None, lab.postgres_pid, lab.kafka.pid)
        wal = wal_bytes(url) - wal_before
        counts = conn.execute(
            sql.SQL("SELECT count(*), count(DISTINCT event_id), sum(quantity) FROM {}").format(
                plan.qualified(raw.table)
            )
        ).fetchone()
    assert counts is not None  # noqa: S101 - an aggregate returns one row
    if export is not None:
        write_records(records, export / "records.jsonl")
        export_tables(url, export, dataset.name)
    quantity = sum(item["quantity"] for item in dataset.expected["inventory"].values())
    checks = [check.ok for check in transaction_checks(counts[:2], dataset.expected)]
    cpu = clock_before.per_event_us(clock_after, len(records))
    cpu["consumer"] = round(own * 1e6 / len(records), 2)  # sending the bytes encoded beforehand
    return {
        "events": len(records),
        "rows": int(counts[0]),
        "quantity": int(counts[2] or 0),
        "seconds": round(seconds, 3),
        "events_per_s": round(len(records) / seconds),
        "cpu_us_per_event": cpu,
        "wal_bytes_per_event": round(wal / len(records), 1),
        "correct": all(checks) and int(counts[2] or 0) == quantity,
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
        result = target.write(
            Batch(chunk, {("badrow", 0): None if stored is None else stored.offset}), decoded, NoSink()
        )
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
    seen, started, wal_before = 0, 0.0, wal_bytes(url)
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
    wal = wal_bytes(url) - wal_before
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
        "wal_bytes_per_event": round(wal / max(seen, 1), 1),
        "correct": rows == lines and 0 < rows <= seen,
        "note": f"bounded to {max_seconds:.0f} s",
    }
