"""Against real PostgreSQL: `init-db` reports a raw table whose conflict key can hold NULL (NULL never
conflicts, so duplicates would be counted twice), and exact decimals arrive in the table digit for digit."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

from pipeline.decode import Decoder
from pipeline.prepare import Preparer
from pipeline.records import Batch, Record, Rejection
from pipeline.rejects import RejectSink
from pipeline.schema import init_db, verify
from pipeline.spec_loader import builtin_dir, load_pipeline, parse_pipeline
from pipeline.sqlplan import WritePlan
from pipeline.target import Target

HEAD = (
    b'{"event_id":"0b7f8f0e-3f7a-4a6e-9d3c-1f2e3d4c5b6a","invoice_id":"i","user_id":"u","item_id":"x",'
    b'"quantity":1,"ts":"2026-01-01T00:00:00Z"'
)


def invoices() -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(tomllib.loads((builtin_dir() / "invoices.toml").read_text()))
    return data


def test_init_db_reports_a_nullable_column_in_the_raw_table_s_conflict_key(database_url: str) -> None:
    plan = WritePlan(load_pipeline("invoices"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        _, mismatches = init_db(conn, plan)
        assert mismatches == []  # the primary key init-db creates makes its columns NOT NULL
        # A table made by hand: a unique index instead of the primary key, over a nullable column.
        conn.execute("ALTER TABLE transactions DROP CONSTRAINT transactions_pkey")
        conn.execute("ALTER TABLE transactions ALTER COLUMN event_id DROP NOT NULL")
        conn.execute("CREATE UNIQUE INDEX transactions_event_id ON transactions (event_id)")
        problems = [str(m) for m in verify(conn, plan)]
        assert problems == [
            "table transactions: dedupe key column event_id can be NULL, and NULL never conflicts: a duplicate "
            "would be written and counted twice (ALTER TABLE public.transactions ALTER COLUMN event_id SET NOT NULL)"
        ]
        # Why it matters: the same row twice, both inserted.
        insert = (
            "INSERT INTO transactions (event_id, invoice_id, user_id, item_id, quantity, unit_price, occurred_at, "
            "kafka_topic, kafka_partition, kafka_offset) VALUES (NULL, 'i', 'u', 'x', 1, 1, now(), 't', 0, 0) "
            "ON CONFLICT (event_id) DO NOTHING"
        )
        assert [conn.execute(insert).rowcount for _ in range(2)] == [1, 1]
        conn.execute("DELETE FROM transactions")
        conn.execute("ALTER TABLE transactions ALTER COLUMN event_id SET NOT NULL")
        assert verify(conn, plan) == []


def test_only_the_nullable_columns_of_a_composite_key_are_named(database_url: str) -> None:
    data = invoices()
    data["raw"]["dedupe_key"] = ["kafka_topic", "kafka_partition", "kafka_offset"]
    plan = WritePlan(parse_pipeline(data))
    with psycopg.connect(database_url, autocommit=True) as conn:
        init_db(conn, plan)
        conn.execute("ALTER TABLE transactions DROP CONSTRAINT transactions_pkey")
        conn.execute("ALTER TABLE transactions ALTER COLUMN kafka_offset DROP NOT NULL")
        conn.execute("ALTER TABLE transactions ADD UNIQUE (kafka_offset, kafka_partition, kafka_topic)")
        problems = [m.problem for m in verify(conn, plan)]
    assert len(problems) == 1 and problems[0].startswith("dedupe key column kafka_offset can be NULL")


class Collecting(RejectSink):
    def __init__(self) -> None:
        self.delivered: list[Rejection] = []

    def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
        self.delivered.extend(rejections)


@pytest.mark.parametrize(
    ("price", "written", "stored"),
    [
        ({"precision": 20, "scale": 4}, b"1234567890123456.7891", "1234567890123456.7891"),
        ({"precision": 20, "scale": 4}, b"2.5", "2.5000"),
        ({"precision": 38, "scale": 18}, b"12345678901234567890.123456789012345678", None),
        ({}, b"123456789012345678901234567890.5", None),
        ({}, b"1e-400", "0." + "0" * 399 + "1"),
        ({}, b"0e-20000", "0." + "0" * 16383),
    ],
)
def test_decimals_are_stored_digit_for_digit(
    database_url: str, price: dict[str, Any], written: bytes, stored: str | None
) -> None:
    data = invoices()
    data["fields"]["unit_price"] = {"type": "decimal", **price}
    data["summaries"] = []
    spec = parse_pipeline(data)
    assert Decoder(spec).exact
    target = Target(spec, database_url, max_savepoints=8, max_transactions=2)
    preparer = Preparer(spec, database_url)
    try:
        _, mismatches = target.init_tables()
        assert mismatches == []
        records = [Record("invoice-lines", 0, 0, None, HEAD + b',"unit_price":' + written + b"}")]
        sink = Collecting()
        result = target.write(Batch(records, {("invoice-lines", 0): None}), preparer.prepare(records), sink)
        assert (result.inserted, sink.delivered) == (1, [])
    finally:
        preparer.close()
        target.close()
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT unit_price::text FROM transactions").fetchone()
    assert row is not None and row[0] == (stored or written.decode())
