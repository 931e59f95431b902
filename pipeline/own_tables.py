"""microbatch's own tables (the offsets table and the audit of position events) carry a schema version.

`init-db` brings them to SCHEMA_VERSION in place (`migrate`); it never alters a pipeline's tables.
`run` refuses an older version with one line saying what to do (`check`). Versions:

  1  the offsets table: (consumer_group, topic, partition) → next_offset, updated_at
  2  + `topic_id` on the offsets table (the topic incarnation a position belongs to), the audit table
     `microbatch_position_events`, and this version table.
  3  + `leader_epoch` and `leader_epoch_offset` on the offsets table (the Kafka leader epoch of the
     record before the stored position, and the position it was stored with).

A rolling upgrade is safe: a consumer of version 1 still reads and compare-and-sets `next_offset`
(it never touches `topic_id`), and a consumer of version 2 records the topic ID when it next takes
the partition. A consumer of version 2 leaves the epoch behind when it moves a position, and a
newer one then ignores it (`leader_epoch_offset` no longer equals `next_offset`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pipeline.offsets import EVENTS_TABLE

SCHEMA_VERSION = 3
VERSION_TABLE = "microbatch_schema_version"


def _version(conn: psycopg.Connection[Any], schema: str, offsets_table: str) -> int | None:
    """The recorded version of the offsets table (None: no version table or no row: version 1 or nothing).
    psycopg.errors.DatatypeMismatch when the recorded version is not an integer (a table made by hand)."""
    exists = conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{VERSION_TABLE}"',)).fetchone()
    if not exists or exists[0] is None:
        return None
    row = conn.execute(
        sql.SQL("SELECT version FROM {} WHERE table_name = %s").format(sql.Identifier(schema, VERSION_TABLE)),
        (offsets_table,),
    ).fetchone()
    if row is None:
        return None
    if isinstance(row[0], int) and not isinstance(row[0], bool):
        return row[0]
    # A database error, so that callers report it as one.
    raise psycopg.errors.DatatypeMismatch(
        f"{schema}.{VERSION_TABLE} records version {str(row[0])[:40]!r} ({type(row[0]).__name__}) for "
        f"{offsets_table}, not an integer: "
        "fix or drop that table, then run `microbatch init-db`"
    )


def _exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{table}"',)).fetchone()
    return bool(row and row[0] is not None)


def ensure_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    """CREATE SCHEMA only when it is missing: PostgreSQL asks for CREATE on the database before it reads
    IF NOT EXISTS, and an owner role with CREATE on an existing schema only has no such privilege."""
    row = conn.execute("SELECT to_regnamespace(%s) IS NULL", (f'"{schema}"',)).fetchone()
    if row and row[0]:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def migrate(conn: psycopg.Connection[Any], schema: str, offsets_table: str) -> list[str]:
    """Create or upgrade microbatch's own tables to SCHEMA_VERSION, in the caller's transaction;
    returns a line per change made."""
    notes: list[str] = []
    ensure_schema(conn, schema)
    current = _version(conn, schema, offsets_table)
    if current is not None and current > SCHEMA_VERSION:
        return [f"{schema}.{offsets_table} is at schema version {current}, newer than this release's: left as it is"]
    if current != SCHEMA_VERSION and _exists(conn, schema, offsets_table):
        added = [("topic_id", "text")] if current is None else []
        added += [("leader_epoch", "integer"), ("leader_epoch_offset", "bigint")]
        for column, kind in added:
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} " + kind).format(
                    sql.Identifier(schema, offsets_table), sql.Identifier(column)
                )
            )
        notes.append(
            f"upgraded {schema}.{offsets_table} from schema version {current or 1} to {SCHEMA_VERSION}: "
            f"added {', '.join(column for column, _ in added)}"
        )
    if not _exists(conn, schema, EVENTS_TABLE):
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                "at timestamp with time zone NOT NULL DEFAULT now(), consumer_group text NOT NULL, "
                "topic text NOT NULL, partition integer NOT NULL, kind text NOT NULL, old_position bigint, "
                "new_position bigint, old_topic_id text, new_topic_id text, detail text NOT NULL DEFAULT '')"
            ).format(sql.Identifier(schema, EVENTS_TABLE))
        )
        notes.append(f"created table {schema}.{EVENTS_TABLE}")
    if not _exists(conn, schema, VERSION_TABLE):
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (table_name text PRIMARY KEY, version integer NOT NULL, "
                "updated_at timestamp with time zone NOT NULL DEFAULT now())"
            ).format(sql.Identifier(schema, VERSION_TABLE))
        )
    if current != SCHEMA_VERSION:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (table_name, version) VALUES (%s, %s) "
                "ON CONFLICT (table_name) DO UPDATE SET version = excluded.version, updated_at = now()"
            ).format(sql.Identifier(schema, VERSION_TABLE)),
            (offsets_table, SCHEMA_VERSION),
        )
    return notes


def check(conn: psycopg.Connection[Any], schema: str, offsets_table: str) -> str | None:
    """None when microbatch's own tables are at SCHEMA_VERSION; otherwise what is wrong and what to do."""
    if not _exists(conn, schema, offsets_table):
        return None  # nothing there yet: the table checks say "does not exist (run `microbatch init-db`)"
    current = _version(conn, schema, offsets_table)
    if current == SCHEMA_VERSION and _exists(conn, schema, EVENTS_TABLE):
        return None
    return (
        f"microbatch's own tables are at schema version {current or 1}, this release needs {SCHEMA_VERSION}: "
        "run `microbatch init-db` to upgrade microbatch's own tables"
    )
