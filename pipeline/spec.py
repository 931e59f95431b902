"""The pipeline definition: which topic, which fields, which tables. Pure data, validated strictly.

A pipeline is a TOML file (`pipeline/builtin/invoices.toml`) loaded by pipeline.spec_loader (lookups: lookup_spec).
Every name that becomes an SQL identifier is checked (pipeline.names), then quoted by `psycopg.sql.Identifier`.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from pipeline.aggregates import AGGREGATES, AggregateKind
from pipeline.expressions import Expression, parse_expression
from pipeline.field_types import BOUNDS, FIELD_TYPES, LENGTHS
from pipeline.lookup_refs import References
from pipeline.lookup_spec import Lookup
from pipeline.names import check_identifier, check_sql_type, check_topic

KafkaAttribute = Literal["topic", "partition", "offset", "timestamp", "key", "topic_id"]
TimeBucket = Literal["day", "hour", "minute"]
# The SQL type of each Kafka attribute a raw column can hold.
KAFKA_TYPES: dict[str, str] = {
    "topic": "text",
    "partition": "integer",
    "offset": "bigint",
    "timestamp": "timestamp with time zone",
    "key": "bytea",
    "topic_id": "text",  # the topic's incarnation: a topic deleted and re-created gets a new one
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class FieldSpec(_Strict):
    """One typed value read from the event's JSON, with its validation rules (types: pipeline.field_types)."""

    type: str
    path: str | None = None
    required: bool = True
    default: Any = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=1)
    min: Decimal | None = None
    max: Decimal | None = None
    min_exclusive: Decimal | None = None
    max_exclusive: Decimal | None = None
    nonzero: bool = False
    precision: int | None = Field(default=None, ge=1, le=1000)
    scale: int | None = Field(default=None, ge=0, le=1000)
    values: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _rules_fit_type(self) -> FieldSpec:
        kind = FIELD_TYPES.get(self.type)
        if kind is None:
            raise ValueError(f"unknown field type {self.type!r}; known types: {', '.join(FIELD_TYPES)}")
        given = {
            rule for rule in (*LENGTHS, *BOUNDS, "precision", "scale", "values")
            if getattr(self, rule) is not None and getattr(self, rule) is not False
        }  # fmt: skip
        if given - kind.rules:
            raise ValueError(f"{', '.join(sorted(given - kind.rules))} do not apply to type {self.type!r}")
        if self.precision is not None and (self.scale or 0) > self.precision:
            raise ValueError("scale cannot exceed precision")
        if "values" in kind.rules and not self.values:
            raise ValueError(f"type {self.type!r} needs 'values', a non-empty list")
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError("min_length is greater than max_length")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        if self.required and self.default is not None:
            raise ValueError("a required field cannot have a default (set required = false)")
        if self.path is not None and not all(part for part in self.path.split(".")):
            raise ValueError(f"path {self.path!r} has an empty segment")
        return self

    def sql_type(self) -> str:
        """The PostgreSQL type that holds every value this field accepts."""
        return FIELD_TYPES[self.type].sql_type(self)


class RawColumn(_Strict):
    """Where one raw-table column's value comes from: exactly one of the four sources."""

    field: str | None = None
    expr: str | None = None
    kafka: KafkaAttribute | None = None
    ingest_time: bool = False
    type: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> RawColumn:
        sources = [
            self.field is not None,
            self.expr is not None,
            self.kafka is not None,
            self.ingest_time,
        ]
        if sum(sources) != 1:
            raise ValueError("a column takes exactly one of: field, expr, kafka, ingest_time")
        if self.expr is not None and self.type is None:
            raise ValueError("an expression column needs a 'type' (e.g. \"numeric\")")
        if self.expr is not None:
            parse_expression(self.expr)
        if self.type is not None:
            check_sql_type(self.type)
        return self


class RawTable(_Strict):
    """The table every valid event is inserted into, once (the dedupe key decides 'once')."""

    table: str
    columns: dict[str, RawColumn]
    dedupe_key: tuple[str, ...]

    @field_validator("columns", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `column = "field_name"` is short for `column = { field = "field_name" }`.
        if isinstance(value, dict):
            return {name: {"field": src} if isinstance(src, str) else src for name, src in value.items()}
        return value

    @model_validator(mode="after")
    def _names(self) -> RawTable:
        check_identifier(self.table, "table")
        for name in self.columns:
            check_identifier(name, "column")
        if not self.dedupe_key:
            raise ValueError("dedupe_key needs at least one column")
        for name in self.dedupe_key:
            if name not in self.columns:
                raise ValueError(f"dedupe_key column {name!r} is not one of the raw table's columns")
            if self.columns[name].ingest_time:
                raise ValueError(f"dedupe_key column {name!r} is the ingest time, which is never repeated")
        if len(set(self.dedupe_key)) != len(self.dedupe_key):
            raise ValueError("dedupe_key names a column twice")
        return self


class KeyColumn(_Strict):
    """A summary key: a raw column as is, or a UTC time bucket of a timestamp column."""

    column: str | None = None
    day: str | None = None
    hour: str | None = None
    minute: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> KeyColumn:
        if sum(x is not None for x in (self.column, self.day, self.hour, self.minute)) != 1:
            raise ValueError("a key takes exactly one of: column, day, hour, minute")
        return self

    @property
    def source(self) -> str:
        return next(x for x in (self.column, self.day, self.hour, self.minute) if x is not None)

    @property
    def bucket(self) -> TimeBucket | None:
        for bucket, value in (("day", self.day), ("hour", self.hour), ("minute", self.minute)):
            if value is not None:
                return bucket  # type: ignore[return-value]
        return None


class Aggregate(_Strict):
    """One summary column folded over the newly inserted raw rows, by a function of the registry
    (`pipeline.aggregates`): `sum = "quantity * unit_price"`, `count = true`, `last = "col", by = "ts"`.

    `last` keeps the value of the row with the greatest `by` (a timestamp column); the summary
    table then also holds `<column>_at`, the `by` value of the row kept. Ties on `by` keep the
    greater value, so the result does not depend on the order messages were processed in.
    """

    function: str
    operand: str | None = None
    by: str | None = None
    type: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _named_function(cls, value: Any) -> Any:
        # In a pipeline file the function is the key: `{ sum = "quantity" }` → function sum, operand quantity.
        if not isinstance(value, dict) or "function" in value:
            return value
        named = [key for key in value if key in AGGREGATES]
        if len(named) != 1:
            raise ValueError(f"an aggregate takes exactly one of: {', '.join(AGGREGATES)}")
        function, operand = named[0], value[named[0]]
        if AGGREGATES[function].operand == "none":
            if operand is not True:
                raise ValueError(f"'{function}' takes true (`{function} = true`)")
            operand = None
        elif not isinstance(operand, str):
            raise ValueError(f"'{function}' takes an expression over raw columns, as a string")
        return {"function": function, "operand": operand, **{k: v for k, v in value.items() if k != function}}

    @model_validator(mode="after")
    def _fits_function(self) -> Aggregate:
        kind = self.kind
        if kind.ordered_by != (self.by is not None):
            ordered = [name for name, k in AGGREGATES.items() if k.ordered_by]
            raise ValueError(
                f"'{self.function}' {'needs' if kind.ordered_by else 'takes no'} 'by' (the timestamp column that "
                f"orders rows); only {', '.join(ordered)} take 'by'"
            )
        if self.operand is not None:
            expression = parse_expression(self.operand)
            if kind.operand == "column" and not expression.is_bare_name:
                raise ValueError(f"'{self.function}' takes a column name, not an expression")
        if self.type is not None:
            check_sql_type(self.type)
        return self

    @property
    def kind(self) -> AggregateKind:
        return AGGREGATES[self.function]

    def expression(self) -> Expression | None:
        return None if self.operand is None else parse_expression(self.operand)


class SummaryTable(_Strict):
    """A table of running aggregates per key, upserted additively in the flush transaction."""

    table: str
    key: dict[str, KeyColumn]
    aggregates: dict[str, Aggregate]

    @field_validator("key", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {name: {"column": src} if isinstance(src, str) else src for name, src in value.items()}
        return value

    @model_validator(mode="after")
    def _names(self) -> SummaryTable:
        check_identifier(self.table, "table")
        if not self.key:
            raise ValueError(f"summary {self.table!r} needs at least one key column")
        if not self.aggregates:
            raise ValueError(f"summary {self.table!r} needs at least one aggregate")
        for name in [*self.key, *self.aggregates]:
            check_identifier(name, "column")
        clash = set(self.key) & set(self.aggregates)
        if clash:
            raise ValueError(f"summary {self.table!r} uses {sorted(clash)} both as key and as aggregate")
        added = {
            column.name
            for name, agg in self.aggregates.items()
            for column in agg.kind.columns(name, "", None)
            if column.name != name
        }
        for column in added:
            check_identifier(column, "column")
        clash = added & (set(self.key) | set(self.aggregates))
        if clash:
            raise ValueError(
                f"summary {self.table!r}: {sorted(clash)} is also a column microbatch adds for an aggregate"
            )
        return self


class PipelineSpec(_Strict):
    """A whole pipeline: topics in, tables out."""

    name: str
    topics: Annotated[tuple[str, ...], Field(min_length=1)]
    group: str = Field(min_length=1)  # librdkafka's consumer aborts the process on an empty group.id
    dead_letter_topic: str | None = None
    schema_name: str = Field(default="public", alias="schema")
    fields: dict[str, FieldSpec]
    lookups: tuple[Lookup, ...] = ()
    raw: RawTable
    summaries: tuple[SummaryTable, ...] = ()
    transform: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    # Directory of the file the spec came from: a `transform` module is looked up there first.
    _origin: Path | None = PrivateAttr(default=None)

    @property
    def origin(self) -> Path | None:
        return self._origin

    @model_validator(mode="after")
    def _references(self) -> PipelineSpec:
        check_identifier(self.schema_name, "schema")
        if not self.fields:
            raise ValueError("a pipeline needs at least one field")
        for name in self.fields:
            check_identifier(name, "field")
        for topic in self.topics:
            check_topic(topic)
        if self.dead_letter_topic is not None:
            check_topic(self.dead_letter_topic)
            if self.dead_letter_topic in self.topics:
                raise ValueError("dead_letter_topic cannot be one of the source topics")
        self.references.check()
        self._check_raw_columns()
        self._check_dedupe_key()
        for summary in self.summaries:
            self._check_summary(summary)
        tables = [self.raw.table, *(s.table for s in self.summaries), *(x.table for x in self.lookups)]
        if len(set(tables)) != len(tables):
            raise ValueError(f"table names clash: {tables}")
        return self

    @property
    def references(self) -> References:
        return References(self.fields, self.lookups)  # what raw columns and lookup keys name

    def _check_raw_columns(self) -> None:
        for name, column in self.raw.columns.items():
            if column.field is not None and (problem := self.references.problem(column.field)) is not None:
                raise ValueError(f"raw column {name!r} reads {problem}")
            if column.expr is not None:
                for ref in parse_expression(column.expr).names:
                    if ref not in self.fields:
                        raise ValueError(f"raw column {name!r}: expression uses unknown field {ref!r}")

    def _check_dedupe_key(self) -> None:
        # ON CONFLICT never matches a NULL: a replayed message would be written and counted again.
        for name in self.raw.dedupe_key:
            if not self.column_required(name):
                column = self.raw.columns[name]
                source, fix = (
                    (f"optional field {column.field!r}", "make it required or give it a default")
                    if column.field in self.fields
                    else (f"lookup value {column.field!r}", "use a lookup that never gives null (on_missing)")
                    if column.field is not None
                    else ("Kafka message key", "use a field or the Kafka coordinates")
                    if column.kafka == "key"
                    else ("expression over optional fields", "use required fields")
                )
                raise ValueError(
                    f"dedupe_key column {name!r} may be null (it reads the {source}): NULL never conflicts, so "
                    f"duplicates would be written and counted twice; {fix}"
                )

    def _check_summary(self, summary: SummaryTable) -> None:
        raw_columns = self.raw.columns
        where = f"summary {summary.table!r}"
        for name, key in summary.key.items():
            if key.source not in raw_columns:
                raise ValueError(f"{where} key {name!r} reads unknown raw column {key.source!r}")
            if key.bucket is not None and self.column_type(key.source) != "timestamp with time zone":
                raise ValueError(f"{where} key {name!r}: {key.bucket} needs a timestamp column")
            if not self.column_required(key.source):
                raise ValueError(
                    f"{where} key {name!r} reads {key.source!r}, which may be missing: keys must be required fields"
                )
        for name, agg in summary.aggregates.items():
            expression = agg.expression()
            for ref in expression.names if expression else ():
                if ref not in raw_columns:
                    raise ValueError(f"{where} aggregate {name!r} uses unknown raw column {ref!r}")
            if agg.by is not None:
                if agg.by not in raw_columns:
                    raise ValueError(f"{where} aggregate {name!r}: 'by' reads unknown raw column {agg.by!r}")
                if self.column_type(agg.by) != "timestamp with time zone":
                    raise ValueError(f"{where} aggregate {name!r}: 'by' must be a timestamp column")
                if not self.column_required(agg.by):
                    raise ValueError(f"{where} aggregate {name!r}: 'by' column {agg.by!r} may be missing")

    def column_type(self, column: str) -> str:
        """The SQL type of a raw-table column."""
        spec = self.raw.columns[column]
        if spec.type is not None:
            return "timestamp with time zone" if spec.type == "timestamptz" else spec.type
        if spec.field is not None:
            return self.references.value_type(spec.field)
        if spec.kafka is not None:
            return KAFKA_TYPES[spec.kafka]
        return "timestamp with time zone"  # ingest_time

    def coordinates_need_topic_id(self) -> bool:
        """True when the dedupe key is Kafka coordinates (it includes the offset) without the topic ID:
        a re-created topic reuses the offsets, so its messages would be taken for duplicates."""
        sources = {self.raw.columns[name].kafka for name in self.raw.dedupe_key}
        return "offset" in sources and "topic_id" not in sources

    def column_required(self, column: str) -> bool:
        """True when every inserted row has a non-null value in `column`."""
        spec = self.raw.columns[column]
        if spec.field is not None:
            return self.references.value_required(spec.field)
        if spec.kafka == "key":
            return False
        if spec.expr is not None:
            return all(self.fields[name].required for name in parse_expression(spec.expr).names)
        return True
