"""Create the pipeline's tables, or check existing ones against the pipeline. Never drops anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pipeline import own_tables
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
    what: str = "table"  # or schema, database, sequence: what `table` names

    def __str__(self) -> str:
        return f"{self.what} {self.table}: {self.problem}"


def shapes(plan: WritePlan) -> list[TableShape]:
    """Every table the pipeline writes: offsets, lookups' reference tables, raw, summaries."""
    return [plan.offsets_shape(), *plan.lookups.shapes(), plan.raw_shape(), *plan.summary_shapes()]


def create_table_sql(plan: WritePlan, shape: TableShape) -> sql.Composed:
    """CREATE TABLE IF NOT EXISTS with the shape's columns, its key as the primary key, and its fillfactor."""
    columns = []
    for column in shape.columns:
        parts = [sql.Identifier(column.name), sql.SQL(column.type)]
        if column.not_null:
            parts.append(sql.SQL("NOT NULL"))
        if column.default is not None:
            parts.append(sql.SQL("DEFAULT " + column.default))
        if column.generated is not None:
            parts.append(sql.SQL(column.generated))
        columns.append(sql.SQL(" ").join(parts))
    columns.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, shape.key))))
    if shape.unique:
        columns.append(sql.SQL("UNIQUE ({})").format(sql.SQL(", ").join(map(sql.Identifier, shape.unique))))
    create = sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
        plan.qualified(shape.name), sql.SQL(", ").join(columns)
    )
    if shape.fillfactor is None:
        return create
    return sql.SQL("{} WITH (fillfactor = {})").format(create, sql.Literal(shape.fillfactor))


def init_db(conn: psycopg.Connection[Any], plan: WritePlan) -> tuple[list[str], list[Mismatch]]:
    """Create missing tables; verify existing ones. Returns (created table names, mismatches).

    Runs in one transaction. Nothing is altered or dropped: a mismatch is reported for a human.
    """
    created: list[str] = []
    with conn.transaction():
        own_tables.ensure_schema(conn, plan.schema)
        existing = _existing_tables(conn, plan.schema)
        for shape in shapes(plan):
            if shape.name not in existing:
                conn.execute(create_table_sql(plan, shape))
                created.append(shape.name)
    return created, verify(conn, plan)


def verify(conn: psycopg.Connection[Any], plan: WritePlan) -> list[Mismatch]:
    """Every mismatch between the database and the pipeline's tables (empty: all good). The session's
    privileges are pipeline.grants' to check."""
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
        for key in (shape.key, shape.unique) if shape.unique else (shape.key,):
            if not _has_unique(conn, plan.schema, shape.name, key):
                keys = ", ".join(key)
                problems.append(Mismatch(shape.name, f"no primary key or unique constraint on ({keys})"))
            elif shape.name == plan.spec.raw.table:
                problems.extend(_nullable_dedupe_key(conn, plan.schema, shape.name, key))
        if shape.name == plan.spec.raw.table:
            problems.extend(_nullable_lookup_columns(conn, plan, shape))
        problems.extend(
            Mismatch(
                shape.name,
                f"column {column} has no default and is not an identity column: microbatch never writes it "
                f"(ALTER TABLE {plan.schema}.{shape.name} ALTER COLUMN {column} ADD GENERATED BY DEFAULT AS IDENTITY)",
            )
            for column in _unfilled(conn, plan.schema, shape.name, shape.filled)
        )
        problems.extend(
            Mismatch(shape.name, behind)
            for column in shape.filled
            if (behind := _behind(conn, plan.schema, shape.name, column))
        )
    return problems


def _nullable(conn: psycopg.Connection[Any], schema: str, table: str, columns: list[str]) -> list[str]:
    """Those of `columns` that the table lets be NULL, in the table's order."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
        "AND a.attname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped AND NOT a.attnotnull ORDER BY a.attnum",
        (schema, table, columns),
    ).fetchall()
    return [str(row[0]) for row in rows]


def _nullable_dedupe_key(
    conn: psycopg.Connection[Any], schema: str, table: str, key: tuple[str, ...]
) -> list[Mismatch]:
    """A nullable column in the raw table's conflict key: NULL never conflicts, so a row with a NULL
    there would be inserted (and counted in every summary) once per delivery."""
    return [
        Mismatch(
            table,
            f"dedupe key column {column} can be NULL, and NULL never conflicts: a duplicate would be written and "
            f"counted twice (ALTER TABLE {schema}.{table} ALTER COLUMN {column} SET NOT NULL)",
        )
        for column in _nullable(conn, schema, table, list(key))
    ]


def _nullable_lookup_columns(conn: psycopg.Connection[Any], plan: WritePlan, shape: TableShape) -> list[Mismatch]:
    """A raw column holding what a lookup found (its id, or a column of its reference row) that may be
    NULL, where the pipeline never writes NULL. The insert joins the reference tables; if a reference
    row was deleted while the writer knew its key (pipeline.lookup_cache), only NOT NULL turns the miss
    into an error that makes the writer look the key up again. Without it the row is written with a
    NULL there, and counted in every summary under it."""
    spec, lookups = plan.spec, {lookup.name for lookup in plan.spec.lookups}
    wanted = [
        column.name
        for column in shape.columns
        if column.not_null and (source := spec.raw.columns[column.name].field) is not None
        and source.partition(".")[0] in lookups
    ]  # fmt: skip
    if not wanted:
        return []
    return [
        Mismatch(
            shape.name,
            f"column {column} holds what a lookup found and can be NULL: if a reference row is deleted, rows would "
            f"be written with a NULL there (ALTER TABLE {plan.schema}.{shape.name} ALTER COLUMN {column} SET NOT NULL)",
        )
        for column in _nullable(conn, plan.schema, shape.name, wanted)
    ]


def _unfilled(conn: psycopg.Connection[Any], schema: str, table: str, columns: tuple[str, ...]) -> list[str]:
    """Those of `columns` that PostgreSQL does not fill itself (no identity, no default)."""
    if not columns:
        return []
    rows = conn.execute(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
        "AND a.attname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity = '' "
        "AND NOT a.atthasdef ORDER BY a.attnum",
        (schema, table, list(columns)),
    ).fetchall()
    return [str(row[0]) for row in rows]


def _behind(conn: psycopg.Connection[Any], schema: str, table: str, column: str) -> str | None:
    """Why the sequence that fills `column` (an identity or serial) would hand out an id the table
    already holds (ids inserted by hand), or None. A lookup's new row would then collide on its id."""
    row = conn.execute(
        "SELECT s, pg_sequence_last_value(s) "
        "FROM (SELECT pg_get_serial_sequence(%s, %s)::regclass AS s) AS q "
        "WHERE s IS NOT NULL AND has_sequence_privilege(s, 'SELECT,USAGE')",
        (f'"{schema}"."{table}"', column),
    ).fetchone()
    if row is None:
        return None  # no sequence, or one this role may not read (init-db, run by the owner, checks it)
    largest = conn.execute(
        sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(column), sql.Identifier(schema, table))
    ).fetchone()
    top = None if largest is None else largest[0]
    if top is None or (row[1] is not None and int(row[1]) >= int(top)):
        return None
    return (
        f"column {column}'s identity is at {row[1] or 'its start'}, behind the largest {column} ({top}): new rows "
        f"would collide with existing ids (setval the sequence {row[0]} to {top})"
    )


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
