"""The SQL of a pipeline's lookups: find-or-create statements, misses, and the joins that resolve ids.

For each range of staged rows the writer sends, in order, before the flush statement:

- per `create = true` lookup, one INSERT of the range's distinct keys that have no row yet, in key
  order, `ON CONFLICT DO NOTHING`; every key has a row afterwards;
- per find-only lookup with `on_missing = "dead_letter"`, one DELETE of the staged rows whose key
  has no row, returning their sequence numbers: those events are dead-lettered, not written.

The flush statement then LEFT JOINs every reference table to the staged rows and reads the ids.

Why this is correct under concurrency (READ COMMITTED):
- an INSERT … ON CONFLICT DO NOTHING returns nothing for keys that exist, and one statement's
  snapshot misses rows committed after it began; so ids are never taken from the INSERT: the
  flush statement that reads them is a later statement with a new snapshot, and sees every row
  committed before it, and the rows this transaction created;
- a key another transaction inserted but has not committed makes our INSERT wait for it, then
  skip the key (it committed: the flush sees it) or insert it (it rolled back): never twice, and
  the UNIQUE constraint on the natural key makes "never twice" a database guarantee;
- keys are inserted in key order (and lookups in declared order, before the summaries' key-ordered
  upserts), so two writers creating overlapping keys in windows written at once wait for each other
  instead of deadlocking; a window being bisected inserts per range, in key order within each, so
  it can deadlock with another writer: PostgreSQL then aborts one (40P01), which is retried;
- the NOT EXISTS keeps keys that already have a row out of the INSERT, so they do not spend an
  identity value each time they are seen;
- everything runs in the flush transaction: a window that rolls back creates nothing, and a row
  isolated by bisection takes the keys only it created with it (its SAVEPOINT rolls them back).

A lookup costs one statement per range (a window, or a bisection node), never one per event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pipeline.errors import ReferenceIdConflict
from pipeline.lookup_spec import Lookup
from pipeline.spec import PipelineSpec
from pipeline.tables import Column, TableShape

ALIAS_PREFIX = "_mb_l"
OLD_ROWS = "_mb_old"


@dataclass(frozen=True)
class LookupStatement:
    """A statement the writer runs over a range [lo, hi) before the flush statement.

    `returns_misses`: the statement returns the sequence numbers of rows whose key has no row
    (they were removed from staging, so the flush does not write them).
    """

    lookup: Lookup
    statement: sql.Composed
    whole: sql.Composed  # the same over every staged row: no range, no parameters (see WritePlan.flush_all)
    returns_misses: bool

    def run(self, conn: psycopg.Connection[Any], params: dict[str, int] | None) -> psycopg.Cursor[Any]:
        """Execute over a range (`params`) or every staged row (None). A create statement conflicts
        on its natural key without error (ON CONFLICT DO NOTHING): any other unique violation is
        the table's fault (ReferenceIdConflict), and must not dead-letter the events."""
        try:
            return conn.execute(self.statement if params else self.whole, params)
        except psycopg.errors.UniqueViolation as exc:
            lookup, constraint = self.lookup, exc.diag.constraint_name or "a unique constraint"
            raise ReferenceIdConflict(
                f"lookup {lookup.name!r}: a new row of {lookup.table} collides with an existing one on {constraint}, "
                f"not on its natural key: the identity of {lookup.id.column} is probably behind ids inserted by "
                "hand; move it past the largest id (setval on pg_get_serial_sequence of the column)"
            ) from exc

    @property
    def miss_message(self) -> str:
        """The dead-letter message of a row this lookup found no reference row for (no row values)."""
        lookup = self.lookup
        return (
            f"lookup {lookup.name!r} found no row in {lookup.table} for this event's {', '.join(lookup.key)} "
            "(the lookup has create = false)"
        )


class LookupPlan:
    """The lookups of one pipeline, composed against the staging table.

    `field_value(name)` renders a staged field as its real type, qualified with the staging table;
    `staging` and `seq` name the staging table and its sequence column.
    """

    def __init__(
        self, spec: PipelineSpec, field_value: Callable[[str], sql.Composable], staging: str, seq: str
    ) -> None:
        self.spec = spec
        self._references = spec.references
        self._field_value = field_value
        self._staging = sql.Identifier(staging)
        self._seq = sql.Identifier(staging, seq)
        self._seq_name = sql.Identifier(seq)
        self._normalised = {
            key: sql.Identifier(staging, column) for key, column in self._references.normalised().items()
        }
        self._index = {lookup.name: index for index, lookup in enumerate(spec.lookups)}
        steps = [statement for index, lookup in enumerate(spec.lookups) if (statement := self._before(index, lookup))]
        # Find-only lookups that do not read a created id go first: an event they dead-letter must not
        # leave behind the reference rows a create lookup would have made for it (one that does read
        # a created id cannot run before it; the rows made for its misses stay, never counted).
        first = [s for s in steps if s.returns_misses and not self._reads_created(s.lookup)]
        self.statements: tuple[LookupStatement, ...] = (*first, *(s for s in steps if s not in first))

    def _reads_created(self, lookup: Lookup) -> bool:
        """True when `lookup`'s key reads, directly or through a chain, the id of a create lookup."""
        lookups = self._references.lookups
        earlier = [lookups[source] for source in lookup.key.values() if source in lookups]
        return any(source.create or self._reads_created(source) for source in earlier)

    # -- values ------------------------------------------------------------------------------------

    def _alias(self, name: str) -> str:
        return f"{ALIAS_PREFIX}{self._index[name]}"

    def value(self, reference: str) -> sql.Composable:
        """A lookup value a raw column reads: `name` (the id) or `name.column`, from the joined row."""
        name, _, column = reference.partition(".")
        lookup = self._references.lookups[name]
        return sql.Identifier(self._alias(name), column or lookup.id.column)

    def _key_value(self, lookup: Lookup, column: str) -> sql.Composable:
        """What the event gives for one key column: an earlier lookup's id, or the field normalised."""
        source = lookup.key[column]
        if source in self._index:
            return self.value(source)
        return self._normalised.get((source, lookup.normalize)) or self._field_value(source)

    def _join(self, index: int, lookup: Lookup) -> sql.Composed:
        alias = f"{ALIAS_PREFIX}{index}"
        matches = sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier(alias, column), self._key_value(lookup, column))
            for column in lookup.key
        )
        return sql.SQL(" LEFT JOIN {} AS {} ON {}").format(
            sql.Identifier(self.spec.schema_name, lookup.table), sql.Identifier(alias), matches
        )

    def joins(self, upto: int | None = None) -> sql.Composable:
        """The LEFT JOINs of the lookups before index `upto` (all of them by default)."""
        lookups = self.spec.lookups[: len(self.spec.lookups) if upto is None else upto]
        return sql.Composed([self._join(index, lookup) for index, lookup in enumerate(lookups)])

    # -- statements before the flush ---------------------------------------------------------------

    def _range(self, ranged: bool) -> sql.Composable:
        if not ranged:
            return sql.SQL("TRUE")
        return sql.SQL("{seq} >= %(lo)s AND {seq} < %(hi)s").format(seq=self._seq)

    def _before(self, index: int, lookup: Lookup) -> LookupStatement | None:
        if lookup.create:
            return LookupStatement(lookup, self._create(index, lookup, True), self._create(index, lookup, False), False)
        if lookup.finds_missing:
            return LookupStatement(lookup, self._misses(index, lookup, True), self._misses(index, lookup, False), True)
        return None

    def _create(self, index: int, lookup: Lookup, ranged: bool) -> sql.Composed:
        table = sql.Identifier(self.spec.schema_name, lookup.table)
        keys = list(lookup.key)
        columns = keys + list(lookup.set_columns)
        values = [self._key_value(lookup, column) for column in keys]
        selected = values + [self._field_value(source) for source in lookup.set_columns.values()]
        positions = sql.SQL(", ").join(sql.SQL(str(n + 1)) for n in range(len(keys)))
        same_key = sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier(OLD_ROWS, column), value)
            for column, value in zip(keys, values, strict=True)
        )
        # Rows whose key has a row already are dropped first (a hash anti-join: most keys of a
        # window usually exist), so only the new keys are sorted. The sort puts them in key order
        # for the insert; DISTINCT ON keeps each key's first event, whose `set` values are written.
        return sql.SQL(
            "INSERT INTO {table} ({columns}) SELECT DISTINCT ON ({positions}) {selected} FROM {staging}{joins} "
            "WHERE {range} AND NOT EXISTS (SELECT 1 FROM {table} AS {old} WHERE {same_key}) "
            "ORDER BY {positions}, {seq} ON CONFLICT ({keys}) DO NOTHING"
        ).format(
            table=table,
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
            positions=positions,
            selected=sql.SQL(", ").join(selected),
            staging=self._staging,
            joins=self.joins(index),
            range=self._range(ranged),
            old=sql.Identifier(OLD_ROWS),
            same_key=same_key,
            seq=self._seq,
            keys=sql.SQL(", ").join(map(sql.Identifier, keys)),
        )

    def _misses(self, index: int, lookup: Lookup, ranged: bool) -> sql.Composed:
        alias = f"{ALIAS_PREFIX}{index}"
        return sql.SQL(
            "DELETE FROM {staging} WHERE {seq_name} IN (SELECT {seq} FROM {staging}{joins} WHERE {range} "
            "AND {id} IS NULL) RETURNING {seq_name}"
        ).format(
            staging=self._staging,
            seq_name=self._seq_name,
            seq=self._seq,
            joins=self.joins(index + 1),
            range=self._range(ranged),
            id=sql.Identifier(alias, lookup.id.column),
        )

    # -- tables ------------------------------------------------------------------------------------

    def shapes(self) -> list[TableShape]:
        """The reference tables: the id as primary key, the natural key UNIQUE."""
        shapes = []
        references = self._references
        for lookup in self.spec.lookups:
            columns = [Column(lookup.id.column, lookup.id.sql_type, not_null=True, generated=lookup.id.default)]
            columns += [Column(c, references.key_type(lookup, c), not_null=True) for c in lookup.key]
            columns += [
                Column(column, self.spec.fields[source].sql_type(), not_null=False)
                for column, source in lookup.set_columns.items()
            ]
            privileges = ("SELECT", "INSERT") if lookup.create else ("SELECT",)
            shapes.append(
                TableShape(
                    lookup.table,
                    tuple(columns),
                    (lookup.id.column,),
                    unique=tuple(lookup.key),
                    privileges=privileges,
                    filled=(lookup.id.column,),
                )
            )
        return shapes
