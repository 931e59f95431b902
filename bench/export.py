"""`python -m bench --export DIR`: what a run consumed and what it left in its tables, for a check
that does not trust the harness (tests/bench/test_bench_smoke.py judges these files itself).

DIR/<dataset>.ledger.jsonl   every message the broker acknowledged (consumer.produce.Ledger)
DIR/<variant>/<table>.csv    the final transactions, inventory and item_sales_daily (COPY … CSV HEADER,
                             timestamps in UTC, ISO date style, NULL as \\N); for the vendor-invoices
                             pipeline (the lookups variant) its own columns, and items and vendors too
DIR/<variant>/records.jsonl  pg_ceiling and raw_ingest only: the in-memory records they wrote, in the
                             ledger's format
DIR/<variant>/dataset.txt    the dataset (ledger) the variant consumed; written last, so its presence
                             means the export is complete

Nothing here runs inside a measured interval.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path

import orjson
import psycopg
from psycopg import sql

from pipeline.records import Record, headers_of

TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # table: (columns exported, ordering)
    "transactions": (
        (
            "event_id", "invoice_id", "user_id", "item_id", "quantity", "unit_price", "occurred_at",
            "kafka_topic", "kafka_partition", "kafka_offset",
        ),
        ("kafka_topic", "kafka_partition", "kafka_offset"),
    ),
    "inventory": (("item_id", "quantity", "last_event_at"), ("item_id",)),
    "item_sales_daily": (("item_id", "day", "units", "revenue", "lines"), ("item_id", "day")),
}  # fmt: skip
VENDOR_TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # keyed by the ids the lookups assign: the check names them by natural key through items and vendors
    "transactions": (
        (
            "event_id", "invoice_id", "vendor_id", "item_id", "sku", "quantity", "unit_price", "occurred_at",
            "kafka_topic", "kafka_partition", "kafka_offset",
        ),
        ("kafka_topic", "kafka_partition", "kafka_offset"),
    ),
    **{name: TABLES[name] for name in ("inventory", "item_sales_daily")},
    "items": (("item_id", "vendor_id", "sku", "description"), ("item_id",)),
    "vendors": (("vendor_id", "name"), ("vendor_id",)),
}  # fmt: skip
EXPORTED = {"invoices": TABLES, "vendor-invoices": VENDOR_TABLES}


def ledger_path(directory: Path, dataset: str) -> Path:
    return directory / f"{dataset}.ledger.jsonl"


def export_tables(url: str, directory: Path, dataset: str, pipeline: str = "invoices") -> None:
    """COPY the final tables of the variant (on `pipeline`) to DIR/<variant>/<table>.csv, then name its dataset."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "dataset.txt").unlink(missing_ok=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("SET DateStyle = 'ISO, YMD'")
        for table, (columns, order) in EXPORTED[pipeline].items():
            # NULL as \N: an unquoted empty field would read as the empty string (an item's description)
            query = sql.SQL(
                "COPY (SELECT {} FROM {} ORDER BY {}) TO STDOUT WITH (FORMAT csv, HEADER true, NULL '\\N')"
            ).format(
                sql.SQL(", ").join(sql.Identifier(column) for column in columns),
                sql.Identifier(table),
                sql.SQL(", ").join(sql.Identifier(column) for column in order),
            )
            with (directory / f"{table}.csv").open("wb") as out, conn.cursor() as cursor, cursor.copy(query) as copy:
                for chunk in copy:
                    out.write(chunk)
    (directory / "dataset.txt").write_text(dataset + "\n")


def write_records(records: Iterable[Record], path: Path) -> None:
    """Records written without Kafka (pg_ceiling, raw_ingest), one ledger-format line each: coordinates, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for record in records:
            entry = {
                "topic": record.topic, "partition": record.partition, "offset": record.offset,
                "key": _b64(record.key), "value": _b64(record.value),
                "headers": [[name, _b64(value)] for name, value in headers_of(record) or ()],
            }  # fmt: skip
            out.write(orjson.dumps(entry) + b"\n")


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()
