"""The SQL of one pipeline, composed once from its spec with `psycopg.sql` (identifiers quoted).

The flush statement does steps 3 and 4 of the write in ONE round trip:

    WITH ins AS (INSERT INTO raw … SELECT … FROM staging WHERE seq in [lo, hi)
                 ON CONFLICT (dedupe key) DO NOTHING RETURNING …),
         s0  AS (INSERT INTO summary … SELECT key, aggregates FROM ins GROUP BY key ORDER BY key
                 ON CONFLICT (key) DO UPDATE SET running = running (+) new RETURNING 1),
         …
    SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM s0), …

Only rows that were actually inserted feed the summaries, so a replayed or duplicated event is
counted once. Grouping makes every key appear once per upsert (PostgreSQL refuses to touch a row
twice, SQLSTATE 21000); ordering by key makes concurrent writers lock hot rows in the same order.
"""

from __future__ import annotations

from psycopg import sql

from pipeline.aggregates import Fold
from pipeline.lookup_sql import LookupPlan
from pipeline.spec import KAFKA_TYPES, Aggregate, KeyColumn, PipelineSpec
from pipeline.tables import Column, TableShape
from pipeline.total_types import operand_type

STAGING_TABLE = "_mb_stage"
SEQ_COLUMN = "_mb_seq"
KAFKA_PREFIX = "_mb_kafka_"
INS = "_mb_ins"
# Summary rows are updated in place, window after window. With room left on each page, PostgreSQL
# writes a row's new version beside the old one and adds no index entry (a HOT update); on full
# pages (the default, 100) an update moves the row and adds an index entry.
SUMMARY_FILLFACTOR = 80


# Binary COPY type names for each staging column type.
_BINARY_TYPES = {
    "integer": "int4",
    "bigint": "int8",
    "text": "text",
    "boolean": "bool",
    "double precision": "float8",
    "timestamp with time zone": "timestamptz",
    "bytea": "bytea",
}


def _staged(sql_type: str) -> str:
    """The staging type of a field's SQL type: text for the types PostgreSQL should parse."""
    return "text" if sql_type == "uuid" or sql_type.startswith("numeric") else sql_type


class WritePlan:
    """Every statement the writer needs for one pipeline, plus the shapes of its tables."""

    def __init__(self, spec: PipelineSpec, offsets_table: str = "microbatch_offsets") -> None:
        self.spec = spec
        self.schema = spec.schema_name
        self.offsets_table = offsets_table
        self.staging_columns: tuple[str, ...] = (
            SEQ_COLUMN,
            *spec.fields,
            *spec.references.normalised().values(),  # lookup keys, normalised while decoding
            *(KAFKA_PREFIX + attr for attr in dict.fromkeys(c.kafka for c in spec.raw.columns.values() if c.kafka)),
        )
        self.insert_columns = tuple(name for name, col in spec.raw.columns.items() if not col.ingest_time)
        self.create_staging = self._create_staging()
        # Binary COPY: about twice as fast as text for the client, which is the bottleneck.
        self.copy_staging = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(STAGING_TABLE),
            sql.SQL(", ").join(map(sql.Identifier, self.staging_columns)),
        )
        self.copy_types = [_BINARY_TYPES[sql_type] for _, sql_type in self._staging_types()]
        self.lookups = LookupPlan(spec, self._field_value, STAGING_TABLE, SEQ_COLUMN)
        self.flush = self._flush_statement(ranged=True)
        # The same statement over every staged row: a window written at once needs no range, and
        # without one PostgreSQL estimates the staged rows from the table's size (it has no
        # statistics of the temporary table, and guesses a range keeps 0.5%: a join planned for 25
        # rows is a nested loop).
        self.flush_all = self._flush_statement(ranged=False)

    def qualified(self, table: str) -> sql.Identifier:
        return sql.Identifier(self.schema, table)

    # -- staging ---------------------------------------------------------------------------------

    def _staging_types(self) -> list[tuple[str, str]]:
        """Staging column types. UUIDs and decimals are staged as the validated text and cast in SQL:
        PostgreSQL parses them (on its own core) instead of Python building objects to dump."""
        spec = self.spec
        types = [(SEQ_COLUMN, "integer")]
        types += [(name, _staged(field.sql_type())) for name, field in spec.fields.items()]
        types += [(name, "text") for name in spec.references.normalised().values()]
        types += [(name, KAFKA_TYPES[name.removeprefix(KAFKA_PREFIX)]) for name in self.staging_columns
                  if name.startswith(KAFKA_PREFIX)]  # fmt: skip
        return types

    def _create_staging(self) -> sql.Composed:
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(sql_type)) for name, sql_type in self._staging_types()
        )
        # ON COMMIT DELETE ROWS: every transaction starts with an empty staging table, for free.
        return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
            sql.Identifier(STAGING_TABLE), columns
        )

    # -- the flush statement ---------------------------------------------------------------------

    def _field_value(self, name: str) -> sql.Composable:
        """A staged field as its real type (text-staged ones are cast), qualified: the flush
        statement joins reference tables, whose columns may share a field's name."""
        sql_type = self.spec.fields[name].sql_type()
        column = sql.Identifier(STAGING_TABLE, name)
        if _staged(sql_type) == sql_type:
            return column
        return sql.SQL("CAST({} AS {})").format(column, sql.SQL(sql_type))

    def _source_expression(self, column: str) -> sql.Composable:
        spec = self.spec.raw.columns[column]
        if spec.field is not None:
            if spec.field in self.spec.fields:
                return self._field_value(spec.field)
            return self.lookups.value(spec.field)
        if spec.kafka is not None:
            return sql.Identifier(STAGING_TABLE, KAFKA_PREFIX + spec.kafka)
        if spec.expr is not None:
            from pipeline.expressions import parse_expression  # noqa: PLC0415 - cached parse

            expression = parse_expression(spec.expr).to_sql(name=self._field_value)
            return sql.SQL("({})::{}").format(expression, sql.SQL(spec.type or "numeric"))
        raise AssertionError(f"column {column} has no insertable source")

    def _returned_columns(self) -> tuple[str, ...]:
        needed: dict[str, None] = {}
        for summary in self.spec.summaries:
            for key in summary.key.values():
                needed[key.source] = None
            for agg in summary.aggregates.values():
                expression = agg.expression()
                for name in expression.names if expression else ():
                    needed[name] = None
                if agg.by is not None:
                    needed[agg.by] = None
        return tuple(needed)

    def _flush_statement(self, *, ranged: bool) -> sql.Composed:
        raw = self.spec.raw
        returned = self._returned_columns()
        returning = sql.SQL(", ").join(map(sql.Identifier, returned)) if returned else sql.SQL("1")
        insert = sql.SQL(
            "INSERT INTO {raw} ({columns}) SELECT {sources} FROM {staging}{joins} "
            "WHERE {range} "
            "ON CONFLICT ({dedupe}) DO NOTHING RETURNING {returning}"
        ).format(
            raw=self.qualified(raw.table),
            columns=sql.SQL(", ").join(map(sql.Identifier, self.insert_columns)),
            sources=sql.SQL(", ").join(self._source_expression(c) for c in self.insert_columns),
            staging=sql.Identifier(STAGING_TABLE),
            joins=self.lookups.joins(),
            range=sql.SQL("{seq} >= %(lo)s AND {seq} < %(hi)s").format(seq=sql.Identifier(STAGING_TABLE, SEQ_COLUMN))
            if ranged
            else sql.SQL("TRUE"),
            dedupe=sql.SQL(", ").join(map(sql.Identifier, raw.dedupe_key)),
            returning=returning,
        )
        # Each count is named after its table, so the writer reads them by name (`flush_counts`).
        ctes = [sql.SQL("{} AS ({})").format(sql.Identifier(INS), insert)]
        counts = [sql.SQL("(SELECT count(*) FROM {}) AS {}").format(sql.Identifier(INS), sql.Identifier(raw.table))]
        for index, summary in enumerate(self.spec.summaries):
            name = sql.Identifier(f"_mb_s{index}")
            ctes.append(
                sql.SQL("{} AS ({})").format(name, self._upsert(summary.table, summary.key, summary.aggregates))
            )
            counts.append(sql.SQL("(SELECT count(*) FROM {}) AS {}").format(name, sql.Identifier(summary.table)))
        return sql.SQL("WITH {} SELECT {}").format(sql.SQL(", ").join(ctes), sql.SQL(", ").join(counts))

    def _upsert(self, table: str, key: dict[str, KeyColumn], aggregates: dict[str, Aggregate]) -> sql.Composed:
        key_names = list(key)
        folds = [fold for name, agg in aggregates.items() for fold in self._folds(name, agg)]
        agg_names = [fold.column for fold in folds]
        positions = sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(key_names)))
        selected = [_key_expression(k) for k in key.values()] + [fold.select for fold in folds]
        merges = [sql.SQL("{} = {}").format(sql.Identifier(fold.column), fold.merge) for fold in folds]
        return sql.SQL(
            "INSERT INTO {table} AS t ({columns}) SELECT {selected} FROM {ins} GROUP BY {positions} "
            "ORDER BY {positions} ON CONFLICT ({key}) DO UPDATE SET {merges} RETURNING 1"
        ).format(
            table=self.qualified(table),
            columns=sql.SQL(", ").join(map(sql.Identifier, key_names + agg_names)),
            selected=sql.SQL(", ").join(selected),
            ins=sql.Identifier(INS),
            positions=positions,
            key=sql.SQL(", ").join(map(sql.Identifier, key_names)),
            merges=sql.SQL(", ").join(merges),
        )

    # -- table shapes (DDL and verification) -----------------------------------------------------

    def raw_shape(self) -> TableShape:
        spec = self.spec
        columns = tuple(
            Column(
                name,
                spec.column_type(name),
                not_null=spec.column_required(name),
                default="now()" if col.ingest_time else None,
            )
            for name, col in spec.raw.columns.items()
        )
        return TableShape(spec.raw.table, columns, spec.raw.dedupe_key)

    def summary_shapes(self) -> list[TableShape]:
        shapes = []
        for summary in self.spec.summaries:
            columns = [Column(name, self._key_type(key), not_null=True) for name, key in summary.key.items()]
            for name, agg in summary.aggregates.items():
                by_type = None if agg.by is None else self.spec.column_type(agg.by)
                result = agg.type or agg.kind.result_type(operand_type(self.spec, agg))
                columns += agg.kind.columns(name, _canonical(result), by_type)
            shapes.append(TableShape(summary.table, tuple(columns), tuple(summary.key), fillfactor=SUMMARY_FILLFACTOR))
        return shapes

    def offsets_shape(self) -> TableShape:
        return TableShape(
            self.offsets_table,
            (
                Column("consumer_group", "text", not_null=True),
                Column("topic", "text", not_null=True),
                Column("partition", "integer", not_null=True),
                Column("next_offset", "bigint", not_null=True),
                Column("updated_at", "timestamp with time zone", not_null=True, default="now()"),
                Column("topic_id", "text", not_null=False),
                Column("leader_epoch", "integer", not_null=False),
                Column("leader_epoch_offset", "bigint", not_null=False),
            ),
            ("consumer_group", "topic", "partition"),
        )

    def _key_type(self, key: KeyColumn) -> str:
        if key.bucket == "day":
            return "date"
        if key.bucket is not None:
            return "timestamp with time zone"
        return self.spec.column_type(key.source)

    def _folds(self, name: str, agg: Aggregate) -> list[Fold]:
        expression = agg.expression()
        value = None if expression is None else expression.to_sql()
        by = None if agg.by is None else sql.Identifier(agg.by)
        return agg.kind.folds(name, value, by)


def _canonical(sql_type: str) -> str:
    return "timestamp with time zone" if sql_type == "timestamptz" else sql_type


def _key_expression(key: KeyColumn) -> sql.Composable:
    column = sql.Identifier(key.source)
    if key.bucket == "day":
        return sql.SQL("(({} AT TIME ZONE 'UTC')::date)").format(column)
    if key.bucket is not None:
        return sql.SQL("date_trunc({}, {}, 'UTC')").format(sql.Literal(key.bucket), column)
    return column
