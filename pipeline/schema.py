"""Create the pipeline's tables, or check existing ones against the pipeline. Never drops anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pipeline.sqlplan import WritePlan
from pipeline.tables import TableShape

# information_schema spells some types differently from what we write in DDL.
_TYPE_ALIASES = {
    "timestamptz": "timestamp with time zone",
    "int": "integer",
    "int4": "integer",
    "int8": "bigint",
    "float8": "double precision",
    "bool": "boolean",
}


@dataclass(frozen=True)
class Mismatch:
    """One way an existing table differs from what the pipeline needs."""

    table: str
    problem: str
    # `microbatch init-db` would mend it (a missing table, microbatch's own tables at an older version):
    # a consumer starting while an init job still runs waits for it instead of giving up.
    init_db_mends: bool = False

    def __str__(self) -> str:
        return f"table {self.table}: {self.problem}"


def shapes(plan: WritePlan) -> list[TableShape]:
    """Every table the pipeline writes: offsets, raw, summaries."""
    return [plan.offsets_shape(), plan.raw_shape(), *plan.summary_shapes()]


def create_table_sql(plan: WritePlan, shape: TableShape) -> sql.Composed:
    """CREATE TABLE IF NOT EXISTS with the shape's columns and its key as the primary key."""
    columns = []
    for column in shape.columns:
        parts = [sql.Identifier(column.name), sql.SQL(column.type)]
        if column.not_null:
            parts.append(sql.SQL("NOT NULL"))
        if column.default is not None:
            parts.append(sql.SQL("DEFAULT " + column.default))
        columns.append(sql.SQL(" ").join(parts))
    columns.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, shape.key))))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(plan.qualified(shape.name), sql.SQL(", ").join(columns))


def init_db(conn: psycopg.Connection[Any], plan: WritePlan) -> tuple[list[str], list[Mismatch]]:
    """Create missing tables; verify existing ones. Returns (created table names, mismatches).

    Runs in one transaction. Nothing is altered or dropped: a mismatch is reported for a human.
    """
    created: list[str] = []
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(plan.schema)))
        existing = _existing_tables(conn, plan.schema)
        for shape in shapes(plan):
            if shape.name not in existing:
                conn.execute(create_table_sql(plan, shape))
                created.append(shape.name)
    return created, verify(conn, plan)


def verify(conn: psycopg.Connection[Any], plan: WritePlan) -> list[Mismatch]:
    """Every mismatch between the database and the pipeline's tables (empty: all good)."""
    problems: list[Mismatch] = []
    for shape in shapes(plan):
        actual = _columns(conn, plan.schema, shape.name)
        if not actual:
            problems.append(Mismatch(shape.name, "does not exist (run `microbatch init-db`)", init_db_mends=True))
            continue
        for column in shape.columns:
            found = actual.get(column.name)
            if found is None:
                problems.append(Mismatch(shape.name, f"missing column {column.name} ({column.type})"))
            elif _normal(found) != _normal(column.type) and not _compatible(found, column.type):
                problems.append(Mismatch(shape.name, f"column {column.name} is {found}, expected {column.type}"))
        if not _has_unique(conn, plan.schema, shape.name, shape.key):
            keys = ", ".join(shape.key)
            problems.append(Mismatch(shape.name, f"no primary key or unique constraint on ({keys})"))
        elif shape.name == plan.spec.raw.table:
            problems.extend(_nullable_dedupe_key(conn, plan.schema, shape.name, shape.key))
        missing = _missing_privileges(conn, plan.schema, shape.name)
        if missing:
            problems.append(
                Mismatch(
                    shape.name,
                    f"the consumer's role lacks {', '.join(missing)} (GRANT SELECT, INSERT, UPDATE ON "
                    f"{plan.schema}.{shape.name} TO <role>)",
                )
            )
    return problems


def _nullable_dedupe_key(
    conn: psycopg.Connection[Any], schema: str, table: str, key: tuple[str, ...]
) -> list[Mismatch]:
    """A nullable column in the raw table's conflict key: NULL never conflicts, so a row with a NULL
    there would be inserted (and counted in every summary) once per delivery."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
        "AND a.attname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped AND NOT a.attnotnull ORDER BY a.attnum",
        (schema, table, list(key)),
    ).fetchall()
    return [
        Mismatch(
            table,
            f"dedupe key column {row[0]} can be NULL, and NULL never conflicts: a duplicate would be written and "
            f"counted twice (ALTER TABLE {schema}.{table} ALTER COLUMN {row[0]} SET NOT NULL)",
        )
        for row in rows
    ]


def _missing_privileges(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    row = conn.execute(
        "SELECT has_table_privilege(c.oid, 'SELECT'), has_table_privilege(c.oid, 'INSERT'), "
        "has_table_privilege(c.oid, 'UPDATE') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (schema, table),
    ).fetchone()
    if row is None:
        return []
    return [name for name, granted in zip(("SELECT", "INSERT", "UPDATE"), row, strict=True) if not granted]


def _normal(type_name: str) -> str:
    return _TYPE_ALIASES.get(type_name, type_name).replace(" ", "")


def _compatible(found: str, wanted: str) -> bool:
    # An unconstrained numeric column holds any numeric(p,s) value.
    return found == "numeric" and wanted.startswith("numeric")


def _existing_tables(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
    ).fetchall()
    return {str(row[0]) for row in rows}


def _columns(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
        (schema, table),
    ).fetchall()
    return {str(row[0]): str(row[1]) for row in rows}


def _has_unique(conn: psycopg.Connection[Any], schema: str, table: str, key: tuple[str, ...]) -> bool:
    rows = conn.execute(
        "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) "
        "WHERE n.nspname = %s AND c.relname = %s AND i.indisunique AND i.indpred IS NULL "
        "GROUP BY i.indexrelid",
        (schema, table),
    ).fetchall()
    wanted = sorted(key)
    return any(list(row[0]) == wanted for row in rows)
