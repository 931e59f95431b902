"""The pipeline definition: which topic, which fields, which tables. Pure data, validated strictly.

A pipeline is declared in a TOML file (see `pipelines/invoices.toml`) and loaded by
`pipeline.spec_loader`. Every name that becomes an SQL identifier is checked here and later composed
only through `psycopg.sql.Identifier`.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from pipeline.expressions import Expression, parse_expression

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
RESERVED_PREFIX = "_mb"

FieldType = Literal["string", "integer", "decimal", "float", "boolean", "uuid", "timestamp", "enum"]
KafkaAttribute = Literal["topic", "partition", "offset", "timestamp", "key"]
TimeBucket = Literal["day", "hour", "minute"]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_identifier(name: str, what: str) -> str:
    """Return `name` when it is a safe lower-case SQL identifier; raise ValueError naming `what`."""
    if not IDENTIFIER.match(name):
        raise ValueError(
            f"{what} {name!r} is not a safe identifier: use lower-case letters, digits and _, "
            "starting with a letter or _, at most 63 characters"
        )
    if name.startswith(RESERVED_PREFIX):
        raise ValueError(f"{what} {name!r} starts with {RESERVED_PREFIX!r}, which microbatch reserves")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class FieldSpec(_Strict):
    """One typed value read from the event's JSON, with its validation rules."""

    type: FieldType
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
        numeric = {"integer", "decimal", "float"}
        if self.type != "string" and (self.min_length is not None or self.max_length is not None):
            raise ValueError(f"min_length/max_length apply to strings, not to type {self.type!r}")
        bounds = (self.min, self.max, self.min_exclusive, self.max_exclusive)
        if self.type not in numeric and (any(b is not None for b in bounds) or self.nonzero):
            raise ValueError(f"min/max/nonzero apply to numbers, not to type {self.type!r}")
        if self.type != "decimal" and (self.precision is not None or self.scale is not None):
            raise ValueError(f"precision/scale apply to decimals, not to type {self.type!r}")
        if self.type == "decimal" and self.precision is not None and (self.scale or 0) > self.precision:
            raise ValueError("scale cannot exceed precision")
        if (self.type == "enum") != (self.values is not None):
            raise ValueError("type 'enum' needs 'values', and only enums take 'values'")
        if self.values is not None and not self.values:
            raise ValueError("'values' cannot be empty")
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
        if self.type == "integer":
            low = self.min if self.min is not None else self.min_exclusive
            high = self.max if self.max is not None else self.max_exclusive
            fits32 = low is not None and high is not None and low >= INT32_MIN and high <= INT32_MAX
            return "integer" if fits32 else "bigint"
        if self.type == "decimal":
            if self.precision is not None:
                return f"numeric({self.precision},{self.scale or 0})"
            return "numeric"
        return {
            "string": "text",
            "float": "double precision",
            "boolean": "boolean",
            "uuid": "uuid",
            "timestamp": "timestamp with time zone",
            "enum": "text",
        }[self.type]


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


AggregateFunction = Literal["sum", "count", "min", "max", "last"]
LAST_SUFFIX = "_at"


class Aggregate(_Strict):
    """One summary column folded over the newly inserted raw rows.

    `last` keeps the value of the row with the greatest `by` (a timestamp column); the summary
    table then also holds `<column>_at`, the `by` value of the row kept. Ties on `by` keep the
    greater value, so the result does not depend on the order messages were processed in.
    """

    sum: str | None = None
    count: bool = False
    min: str | None = None
    max: str | None = None
    last: str | None = None
    by: str | None = None
    type: str | None = None

    @model_validator(mode="after")
    def _one_function(self) -> Aggregate:
        chosen = [self.sum is not None, self.count, self.min is not None, self.max is not None, self.last is not None]
        if sum(chosen) != 1:
            raise ValueError("an aggregate takes exactly one of: sum, count, min, max, last")
        if (self.last is not None) != (self.by is not None):
            raise ValueError("'last' needs 'by' (the timestamp column that orders rows), and only 'last' takes 'by'")
        if self.expression_text is not None:
            parse_expression(self.expression_text)
        if self.type is not None:
            check_sql_type(self.type)
        return self

    @property
    def function(self) -> AggregateFunction:
        if self.sum is not None:
            return "sum"
        if self.count:
            return "count"
        if self.last is not None:
            return "last"
        return "min" if self.min is not None else "max"

    @property
    def expression_text(self) -> str | None:
        for text in (self.sum, self.min, self.max, self.last):
            if text is not None:
                return text
        return None

    def expression(self) -> Expression | None:
        text = self.expression_text
        return None if text is None else parse_expression(text)


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
        companions = {name + LAST_SUFFIX for name, agg in self.aggregates.items() if agg.function == "last"}
        for companion in companions:
            check_identifier(companion, "column")
        clash = companions & (set(self.key) | set(self.aggregates))
        if clash:
            raise ValueError(
                f"summary {self.table!r}: {sorted(clash)} is also the column microbatch adds for a 'last' aggregate"
            )
        return self


SQL_TYPES = re.compile(
    r"^(smallint|integer|bigint|numeric(\(\d{1,4}(,\d{1,4})?\))?|real|double precision|text|boolean"
    r"|uuid|date|timestamp with time zone|timestamptz)$"
)


def check_sql_type(name: str) -> str:
    """Accept only plain type names from a fixed list: a type is spliced into DDL, never a value."""
    if not SQL_TYPES.match(name):
        raise ValueError(f"unsupported SQL type {name!r}")
    return name


class PipelineSpec(_Strict):
    """A whole pipeline: topics in, tables out."""

    name: str
    topics: Annotated[tuple[str, ...], Field(min_length=1)]
    group: str
    dead_letter_topic: str | None = None
    schema_name: str = Field(default="public", alias="schema")
    fields: dict[str, FieldSpec]
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
            _check_topic(topic)
        if self.dead_letter_topic is not None:
            _check_topic(self.dead_letter_topic)
            if self.dead_letter_topic in self.topics:
                raise ValueError("dead_letter_topic cannot be one of the source topics")
        self._check_raw_columns()
        for summary in self.summaries:
            self._check_summary(summary)
        tables = [self.raw.table, *(summary.table for summary in self.summaries)]
        if len(set(tables)) != len(tables):
            raise ValueError(f"table names clash: {tables}")
        return self

    def _check_raw_columns(self) -> None:
        for name, column in self.raw.columns.items():
            if column.field is not None and column.field not in self.fields:
                raise ValueError(f"raw column {name!r} reads unknown field {column.field!r}")
            if column.expr is not None:
                for ref in parse_expression(column.expr).names:
                    if ref not in self.fields:
                        raise ValueError(f"raw column {name!r}: expression uses unknown field {ref!r}")

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
            if agg.last is not None and not (expression and expression.is_bare_name):
                raise ValueError(f"{where} aggregate {name!r}: 'last' takes a column name, not an expression")
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
            return self.fields[spec.field].sql_type()
        if spec.kafka is not None:
            return {"topic": "text", "partition": "integer", "offset": "bigint",
                    "timestamp": "timestamp with time zone", "key": "bytea"}[spec.kafka]  # fmt: skip
        return "timestamp with time zone"  # ingest_time

    def column_required(self, column: str) -> bool:
        """True when every inserted row has a non-null value in `column`."""
        spec = self.raw.columns[column]
        if spec.field is not None:
            field = self.fields[spec.field]
            return field.required or field.default is not None
        if spec.kafka == "key":
            return False
        if spec.expr is not None:
            return all(self.fields[name].required for name in parse_expression(spec.expr).names)
        return True


def _check_topic(topic: str) -> None:
    if not re.match(r"^[A-Za-z0-9._-]{1,249}$", topic) or topic in {".", ".."}:
        raise ValueError(f"{topic!r} is not a valid Kafka topic name")
