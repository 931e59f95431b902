"""The writer's known-keys cache against real PostgreSQL: it saves statements, never correctness."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import orjson
import psycopg
import pytest
from psycopg import sql

from pipeline.errors import DatabaseFailure, FailureClass
from pipeline.prepare import Preparer
from pipeline.records import Batch, Record, Rejection
from pipeline.rejects import RejectSink
from pipeline.spec_loader import builtin_dir, load_pipeline
from pipeline.target import Target

TOPIC = "vendor-invoice-lines"


class Collecting(RejectSink):
    def __init__(self) -> None:
        self.delivered: list[Rejection] = []

    def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
        self.delivered.extend(rejections)


def _records(start: int, skus: Sequence[str]) -> list[Record]:
    return [
        Record(
            TOPIC,
            0,
            start + n,
            None,
            orjson.dumps(
                {
                    "event_id": str(uuid.uuid4()),
                    "invoice_id": "i",
                    "vendor": "Acme",
                    "sku": sku,
                    "quantity": 2,
                    "unit_price": 1.5,
                    "ts": "2026-01-01T00:00:00Z",
                }
            ),
        )
        for n, sku in enumerate(skus)
    ]


def test_known_keys_skip_the_lookups_and_a_deleted_reference_row_is_created_again(database_url: str) -> None:
    spec = load_pipeline("vendor-invoices")
    target = Target(spec, database_url, lookup_cache_keys=1000)
    preparer = Preparer(spec, database_url)
    try:
        assert target.init_tables()[1] == []
        sink = Collecting()
        first = _records(0, ["A", "B", "a "])
        done = target.write(Batch(first, {(TOPIC, 0): None}), preparer.prepare(first), sink)
        assert done.statements == 3  # two lookups and the flush
        second = _records(3, ["b", "A"])
        done = target.write(Batch(second, {(TOPIC, 0): 3}), preparer.prepare(second), sink)
        assert (done.statements, done.inserted) == (1, 2)  # every key known: the flush alone
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM items WHERE sku = 'a'")  # microbatch never does this; a person might
        third = _records(5, ["a", "b"])
        done = target.write(Batch(third, {(TOPIC, 0): 5}), preparer.prepare(third), sink)
        assert done.inserted == 2 and done.bisected and sink.delivered == []
        with psycopg.connect(database_url) as conn:
            items = conn.execute("SELECT sku, count(*) FROM items GROUP BY sku ORDER BY sku").fetchall()
            written = conn.execute("SELECT count(*), count(item_id) FROM transactions").fetchone()
        assert items == [("a", 1), ("b", 1)]
        assert written == (7, 7)
    finally:
        target.close()
        preparer.close()


def test_an_identity_behind_hand_inserted_ids_is_reported_and_stops_instead_of_dead_lettering(
    database_url: str,
) -> None:
    spec = load_pipeline("vendor-invoices")
    target = Target(spec, database_url)
    preparer = Preparer(spec, database_url)
    try:
        assert target.init_tables()[1] == []
        with psycopg.connect(database_url, autocommit=True) as conn:  # master data imported with its own ids
            conn.execute("INSERT INTO vendors (vendor_id, name) SELECT g, 'seeded-' || g FROM generate_series(1, 5) g")
        problems = [str(m) for m in target.verify_tables()]
        assert problems == [
            "table vendors: column vendor_id's identity is at its start, behind the largest vendor_id (5): new rows "
            "would collide with existing ids (setval the sequence vendors_vendor_id_seq to 5)"
        ]
        sink = Collecting()
        window = _records(0, ["A", "B"])
        with pytest.raises(DatabaseFailure) as caught:
            target.write(Batch(window, {(TOPIC, 0): None}), preparer.prepare(window), sink)
        assert (caught.value.failure, caught.value.sqlstate) == (FailureClass.SYSTEMIC, "55000")
        assert "lookup 'vendor'" in str(caught.value) and "vendors_pkey" in str(caught.value)
        assert sink.delivered == []  # nothing dead-lettered: the events wait for the fix
        assert target.stored_positions([(TOPIC, 0)]) == {}
    finally:
        target.close()
        preparer.close()


def test_a_nullable_lookup_column_is_a_mismatch_because_the_cache_relies_on_not_null(
    database_url: str, tmp_path: Path
) -> None:
    """What init-db's NOT NULL guards: without it, a deleted reference row whose key the writer knows
    makes a row with a NULL id, silently (here no summary is keyed by the id, whose primary key would
    refuse the NULL). verify names every such column of a hand-made raw table."""
    text = (builtin_dir() / "vendor-invoices.toml").read_text()
    path = tmp_path / "raw-only.toml"
    path.write_text(text[: text.index("[[summaries]]")])
    spec = load_pipeline(path)
    target = Target(spec, database_url, lookup_cache_keys=1000)
    preparer = Preparer(spec, database_url)
    try:
        assert target.init_tables()[1] == []
        with psycopg.connect(database_url, autocommit=True) as conn:
            for column in ("vendor_id", "item_id", "sku"):
                conn.execute(
                    sql.SQL("ALTER TABLE transactions ALTER COLUMN {} DROP NOT NULL").format(sql.Identifier(column))
                )
        assert [str(m) for m in target.verify_tables()] == [
            f"table transactions: column {column} holds what a lookup found and can be NULL: if a reference row is "
            f"deleted, rows would be written with a NULL there (ALTER TABLE public.transactions ALTER COLUMN "
            f"{column} SET NOT NULL)"
            for column in ("vendor_id", "item_id", "sku")
        ]
        # The hazard itself: a known key whose reference row is gone.
        sink = Collecting()
        first = _records(0, ["A"])
        target.write(Batch(first, {(TOPIC, 0): None}), preparer.prepare(first), sink)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM items WHERE sku = 'a'")
        second = _records(1, ["A", "a "])  # two rows: a single one always looks its keys up
        done = target.write(Batch(second, {(TOPIC, 0): 1}), preparer.prepare(second), sink)
        assert (done.inserted, sink.delivered) == (2, []), done
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT count(*) FILTER (WHERE item_id IS NULL) FROM transactions").fetchone() == (2,)
    finally:
        target.close()
        preparer.close()
