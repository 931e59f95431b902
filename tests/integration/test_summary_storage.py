"""Against real PostgreSQL: `init-db` creates summary tables with room on each page for in-place (HOT)
updates, and leaves the raw table, which is only inserted into, at PostgreSQL's default."""

from __future__ import annotations

import psycopg

from pipeline.schema import init_db
from pipeline.spec_loader import load_pipeline
from pipeline.sqlplan import SUMMARY_FILLFACTOR, WritePlan


def test_init_db_creates_summary_tables_with_room_for_in_place_updates(database_url: str) -> None:
    plan = WritePlan(load_pipeline("invoices"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        created, mismatches = init_db(conn, plan)
        assert mismatches == [] and {"transactions", "inventory", "item_sales_daily"} <= set(created)
        options: dict[str, list[str] | None] = dict(
            conn.execute(
                "SELECT relname, reloptions FROM pg_class WHERE relkind = 'r' AND relname = ANY(%s)",
                (["transactions", "inventory", "item_sales_daily"],),
            ).fetchall()
        )
    assert options == {
        "transactions": None,  # insert-only: full pages
        "inventory": [f"fillfactor={SUMMARY_FILLFACTOR}"],
        "item_sales_daily": [f"fillfactor={SUMMARY_FILLFACTOR}"],
    }
    assert 50 <= SUMMARY_FILLFACTOR < 100
