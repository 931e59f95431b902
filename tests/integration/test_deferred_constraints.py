"""A constraint a hand-made table declares INITIALLY DEFERRED, against real PostgreSQL: the rows that break it
are isolated and dead-lettered like any other bad row, not found at COMMIT for the whole window."""

from __future__ import annotations

import orjson
import psycopg

from pipeline.records import Batch, RejectReason
from tests.integration.test_writer import TOPIC, Collecting, Pipeline, count, pipeline, records

__all__ = ["pipeline"]  # the fixture, shared with the writer's own tests


def test_a_deferred_foreign_key_is_checked_where_bisection_sees_it(pipeline: Pipeline, database_url: str) -> None:
    batch = records(300, seed=21)
    items = sorted({orjson.loads(r.value or b"")["item_id"] for r in batch})
    missing = items[3]
    bad = [r.offset for r in batch if orjson.loads(r.value or b"")["item_id"] == missing]
    assert len(bad) >= 2, "the seed must give rows of the missing item"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE known_items (item_id text PRIMARY KEY)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO known_items VALUES (%s)", [(item,) for item in items if item != missing])
        conn.execute(
            "ALTER TABLE transactions ADD CONSTRAINT known_item FOREIGN KEY (item_id) REFERENCES known_items "
            "DEFERRABLE INITIALLY DEFERRED"
        )
    sink = Collecting()
    # Checked only at COMMIT, the violation failed every attempt of the window as one (SQLSTATE 23503 on
    # COMMIT: no row to isolate), so the consumer halted on one bad message.
    result = pipeline.write(Batch(batch, {(TOPIC, 0): None}), sink)
    assert result.bisected
    assert sorted(r.record.offset for r in sink.delivered) == bad
    assert {(r.reason, r.sqlstate) for r in sink.delivered} == {(RejectReason.DB_REJECTED, "23503")}
    assert pipeline.stored_positions([(TOPIC, 0)]) == {(TOPIC, 0): 300}
    assert count(database_url, "SELECT count(*) FROM transactions") == 300 - len(bad)
    assert count(database_url, "SELECT sum(lines) FROM item_sales_daily") == 300 - len(bad)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM inventory WHERE item_id = %s", [missing]).fetchone() == (0,)
