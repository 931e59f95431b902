"""The runtime role's privileges: exactly what `run`, `status`, `dlq replay` and `positions reset` need.

The owner role runs `init-db` (DDL); the runtime role gets USAGE on the schema, TEMPORARY on the database
(the staging tables are temporary), the privileges each table's shape names (SELECT, INSERT, UPDATE on the
pipeline's tables and the offsets table; SELECT or SELECT, INSERT on a lookup's reference table), SELECT
and INSERT on the audit of position events, SELECT on the schema version, SELECT on the sequence of a
reference table's id (and USAGE when it is a serial's). Nothing else: no CREATE, DELETE, TRUNCATE, ownership.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pipeline.offsets import EVENTS_TABLE
from pipeline.own_tables import VERSION_TABLE
from pipeline.schema import Mismatch, shapes
from pipeline.sqlplan import WritePlan


@dataclass(frozen=True)
class Grant:
    """`privileges` on one object: kind SCHEMA, DATABASE, TABLE or SEQUENCE; `name` its identifier parts."""

    kind: str
    name: tuple[str, ...]
    privileges: tuple[str, ...]

    def statement(self, role: str) -> sql.Composed:
        return sql.SQL("GRANT {} ON {} {} TO {}").format(
            sql.SQL(", ").join(map(sql.SQL, self.privileges)),
            sql.SQL(self.kind),
            sql.Identifier(*self.name),
            sql.Identifier(role),
        )

    def missing(self, conn: psycopg.Connection[Any], role: str | None) -> list[str]:
        """Those of `privileges` that `role` (None: the session's user) does not hold."""
        function = {"SCHEMA": "has_schema_privilege", "DATABASE": "has_database_privilege",
                    "TABLE": "has_table_privilege", "SEQUENCE": "has_sequence_privilege"}[self.kind]  # fmt: skip
        who = sql.SQL("current_user") if role is None else sql.Literal(role)
        query = sql.SQL(
            "SELECT p FROM unnest(%s::text[]) WITH ORDINALITY AS u(p, o) WHERE NOT {}({}, %s, p) ORDER BY o"
        )
        # A schema or database is named as is; a table or sequence as an SQL name, parsed (quoted parts).
        name = self.name[0] if len(self.name) == 1 else ".".join(f'"{part}"' for part in self.name)
        rows = conn.execute(query.format(sql.Identifier(function), who), (list(self.privileges), name)).fetchall()
        return [str(row[0]) for row in rows]

    def __str__(self) -> str:
        return f"{', '.join(self.privileges)} ON {self.kind} {'.'.join(self.name)}"


def runtime_grants(conn: psycopg.Connection[Any], plan: WritePlan) -> list[Grant]:
    """What the runtime role needs, for tables that exist (a missing table is the schema check's to report)."""
    schema = plan.schema
    database = conn.execute("SELECT current_database()").fetchone()
    grants = [
        Grant("SCHEMA", (schema,), ("USAGE",)),
        Grant("DATABASE", (str(database[0]) if database else "",), ("TEMPORARY",)),
    ]
    for shape in shapes(plan):
        if _exists(conn, schema, shape.name):
            grants.append(Grant("TABLE", (schema, shape.name), shape.privileges))
            grants += [
                Grant("SEQUENCE", (seq_schema, name), ("SELECT", "USAGE") if serial else ("SELECT",))
                for seq_schema, name, serial in _sequences(conn, schema, shape.name)
            ]
    for table, privileges in ((EVENTS_TABLE, ("SELECT", "INSERT")), (VERSION_TABLE, ("SELECT",))):
        if _exists(conn, schema, table):
            grants.append(Grant("TABLE", (schema, table), privileges))
    return grants


def grant(conn: psycopg.Connection[Any], plan: WritePlan, role: str) -> list[str]:
    """GRANT `role` the runtime privileges (idempotent), in one transaction; returns the statements run.
    psycopg.errors.UndefinedObject when the role does not exist."""
    statements = [item.statement(role) for item in runtime_grants(conn, plan)]
    with conn.transaction():
        for statement in statements:
            conn.execute(statement)
    return [statement.as_string(conn) for statement in statements]


def missing_privileges(conn: psycopg.Connection[Any], plan: WritePlan, role: str | None = None) -> list[Mismatch]:
    """Each runtime privilege `role` (None: the session's user) lacks, with the GRANT that mends it.
    Without USAGE on the schema nothing in it can be seen: that one is reported alone."""
    present = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (f'"{plan.schema}"',)).fetchone()
    if not present or not present[0]:
        return []  # no schema yet: the table checks report its tables missing, which init-db mends
    usage = Grant("SCHEMA", (plan.schema,), ("USAGE",))
    found = [usage] if usage.missing(conn, role) else runtime_grants(conn, plan)
    problems = []
    for item in found:
        absent = item.missing(conn, role)
        if absent:
            name, privileges = ".".join(item.name), ", ".join(absent)
            problems.append(Mismatch(name, f"the consumer's role lacks {privileges} (GRANT {privileges} ON "
                                           f"{item.kind} {name} TO <role>, or run `microbatch init-db --grant-to "
                                           "<role>` as the owner)", what=item.kind.lower()))  # fmt: skip
    return problems


def _exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{table}"',)).fetchone()
    return bool(row and row[0] is not None)


def _sequences(conn: psycopg.Connection[Any], schema: str, table: str) -> list[tuple[str, str, bool]]:
    """(schema, name, is a serial's) of each sequence that fills a column of `table`. A serial's needs
    USAGE (nextval); an identity's none to insert, and SELECT on either lets the start-up check read how
    far it is (pipeline.schema: ids inserted by hand behind it)."""
    rows = conn.execute(
        "SELECT sn.nspname, s.relname, d.deptype = 'a' FROM pg_depend d "
        "JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' JOIN pg_namespace sn ON sn.oid = s.relnamespace "
        "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace "
        "WHERE d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') AND tn.nspname = %s "
        "AND t.relname = %s ORDER BY s.relname",
        (schema, table),
    ).fetchall()
    return [(str(row[0]), str(row[1]), bool(row[2])) for row in rows]
