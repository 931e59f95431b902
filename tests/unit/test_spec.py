"""Pipeline files: the built-in ones load; mistakes are refused naming the key and the reason."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest

from pipeline.expressions import parse_expression
from pipeline.spec_loader import PipelineFileError, builtin_dir, load_pipeline, parse_pipeline
from pipeline.sqlplan import WritePlan


def base() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((builtin_dir() / "invoices.toml").read_text())
    return copy.deepcopy(data)


def test_builtin_invoices_loads_with_the_issue_s_shape() -> None:
    spec = load_pipeline()
    assert spec.topics == ("invoice-lines",)
    assert spec.group == "microbatch-invoices"
    assert spec.dead_letter_topic == "invoice-lines.dlq"
    plan = WritePlan(spec)
    raw = {c.name: c.type for c in plan.raw_shape().columns}
    assert raw["event_id"] == "uuid" and raw["quantity"] == "integer" and raw["unit_price"] == "numeric(14,4)"
    assert raw["occurred_at"] == "timestamp with time zone" and raw["kafka_offset"] == "bigint"
    shapes = {s.name: s for s in plan.summary_shapes()}
    assert shapes["inventory"].key == ("item_id",)
    assert {c.name: c.type for c in shapes["inventory"].columns}["quantity"] == "bigint"
    daily = {c.name: c.type for c in shapes["item_sales_daily"].columns}
    assert daily == {
        "item_id": "text",
        "day": "date",
        "units": "bigint",
        "revenue": "numeric",
        "lines": "bigint",
    }


def mutate(path: str, value: Any) -> dict[str, Any]:
    data = base()
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()

MISTAKES = [
    ("unknown top-level key", "colour", "blue", "colour: unknown key"),
    ("unknown field rule", "fields.quantity.maximum", 5, "maximum: unknown key"),
    ("wrong type name", "fields.quantity.type", "int", "unknown field type 'int'; known types: string"),
    ("unsafe table name", "raw.table", "transactions; DROP TABLE x", "not a safe identifier"),
    ("upper-case column", "raw.columns.Quantity", "quantity", "not a safe identifier"),
    ("reserved prefix", "raw.columns._mb_x", "quantity", "reserves"),
    ("unknown field in column", "raw.columns.quantity", "qty", "unknown field 'qty'"),
    ("dedupe on unknown column", "raw.dedupe_key", ["nope"], "not one of the raw table's columns"),
    ("empty dedupe key", "raw.dedupe_key", [], "at least one column"),
    (
        "summary key on missing column",
        "summaries.0.key",
        {"item_id": "sku"},
        "unknown raw column 'sku'",
    ),
    (
        "two aggregate functions",
        "summaries.0.aggregates.quantity",
        {"sum": "quantity", "max": "quantity"},
        "exactly one",
    ),
    (
        "expression with a call",
        "summaries.1.aggregates.revenue",
        {"sum": "pow(quantity, 2)"},
        "only names, numbers",
    ),
    (
        "expression with unknown column",
        "summaries.1.aggregates.revenue",
        {"sum": "quantity * price"},
        "unknown raw column 'price'",
    ),
    (
        "day bucket on a non-timestamp",
        "summaries.1.key.day",
        {"day": "item_id"},
        "needs a timestamp",
    ),
    ("clashing table names", "summaries.0.table", "transactions", "table names clash"),
    (
        "dead letters into the source",
        "dead_letter_topic",
        "invoice-lines",
        "cannot be one of the source topics",
    ),
    ("bad topic name", "topics", ["bad topic!"], "not a valid Kafka topic name"),
    ("min_length on an integer", "fields.quantity.min_length", 1, "do not apply to type"),
    ("min above max", "fields.quantity.min", 5_000_000, "min is greater than max"),
    ("enum without values", "fields.event_id.type", "enum", "needs 'values'"),
    ("required with default", "fields.item_id.default", "x", "cannot have a default"),
    (
        "unsupported SQL type",
        "summaries.1.aggregates.revenue",
        {"sum": "quantity", "type": "text; --"},
        "unsupported SQL type",
    ),
    ("no topics", "topics", [], "at least 1"),
    ("missing raw table", "raw", DELETE, "raw: Field required"),
    ("last without by", "summaries.0.aggregates.last_event_at", {"last": "invoice_id"}, "'last' needs 'by'"),
    (
        "by on a non-timestamp",
        "summaries.0.aggregates.seen",
        {"last": "invoice_id", "by": "item_id"},
        "'by' must be a timestamp",
    ),
    (
        "last of an expression",
        "summaries.0.aggregates.seen",
        {"last": "quantity * 2", "by": "occurred_at"},
        "takes a column name",
    ),
    ("companion column clash", "summaries.0.aggregates.seen_at", {"max": "occurred_at"}, "seen_at"),
    ("transform not module:function", "transform", "just_a_module", "String should match pattern"),
]


@pytest.mark.parametrize(("name", "path", "value", "message"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistakes_are_refused_naming_key_and_reason(name: str, path: str, value: Any, message: str) -> None:
    data = mutate(path, value)
    if name == "companion column clash":
        data["summaries"][0]["aggregates"]["seen"] = {"last": "invoice_id", "by": "occurred_at"}
    with pytest.raises(PipelineFileError) as caught:
        parse_pipeline(data, origin="test.toml")
    assert message in str(caught.value)
    assert "test.toml" in str(caught.value)


def test_missing_and_unparseable_files(tmp_path: Any) -> None:
    with pytest.raises(PipelineFileError, match="does not exist"):
        load_pipeline(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = ")
    with pytest.raises(PipelineFileError, match="not valid TOML"):
        load_pipeline(broken)


def test_expressions_render_identifiers_quoted() -> None:
    expression = parse_expression("quantity * unit_price - 2")
    assert expression.names == ("quantity", "unit_price")
    rendered = expression.to_sql().as_string(None)
    assert rendered == '(("quantity" * "unit_price") - 2)'


@pytest.mark.parametrize("text", ["__import__('os')", "a.b", "a[0]", "a if b else c", "'text'", "True", "a ** 2", ""])
def test_expressions_refuse_anything_but_arithmetic(text: str) -> None:
    with pytest.raises(ValueError, match="expression"):
        parse_expression(text)


def test_builtin_pageviews_declares_last_with_its_companion_column() -> None:
    plan = WritePlan(load_pipeline("pageviews"))
    (minutely,) = plan.summary_shapes()
    columns = {c.name: (c.type, c.not_null) for c in minutely.columns}
    assert columns["minute"] == ("timestamp with time zone", True)
    assert columns["views"] == ("bigint", True)
    assert columns["min_load_ms"] == ("integer", False)
    assert columns["last_referrer"] == ("text", False)
    assert columns["last_referrer_at"] == ("timestamp with time zone", False)
    flush = plan.flush.as_string(None)
    assert 'array_agg("referrer" ORDER BY "viewed_at" DESC, "referrer" DESC NULLS LAST)' in flush


def test_dedupe_key_can_be_the_kafka_coordinates() -> None:
    data = base()
    data["raw"]["dedupe_key"] = ["kafka_topic", "kafka_partition", "kafka_offset"]
    spec = parse_pipeline(data)
    assert WritePlan(spec).raw_shape().key == ("kafka_topic", "kafka_partition", "kafka_offset")
