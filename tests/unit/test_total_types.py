"""A running total's column type must hold every total exactly (pipeline/total_types.py): each window's
total is cast to it before it is added, so a rounding or narrow type would make totals depend on where
windows end. And names that end in a newline are not names (pipeline/names.py)."""

from __future__ import annotations

import tomllib
from decimal import ROUND_HALF_UP, Decimal

import pytest

from pipeline.names import check_identifier, check_sql_type, check_topic
from pipeline.spec_loader import PipelineFileError, builtin_dir, parse_pipeline
from pipeline.sqlplan import WritePlan


def _invoices_with(aggregates: str) -> dict[str, object]:
    """The built-in invoice pipeline with one more summary holding these aggregates."""
    text = (builtin_dir() / "invoices.toml").read_text()
    text += f'\n[[summaries]]\ntable = "extra_totals"\nkey = {{ item_id = "item_id" }}\n{aggregates}\n'
    return tomllib.loads(text)


def test_a_total_rounded_per_window_depends_on_where_windows_end() -> None:
    """Why the rule exists (the README's example): numeric(12,2) over 4-decimal prices, each window's
    total cast (PostgreSQL rounds half away from zero), then added."""
    prices = [Decimal("0.0050")] * 4
    cent = Decimal("0.01")
    one_window = sum(prices, Decimal(0)).quantize(cent, ROUND_HALF_UP)
    four_windows = sum((p.quantize(cent, ROUND_HALF_UP) for p in prices), Decimal(0))
    assert (one_window, four_windows) == (Decimal("0.02"), Decimal("0.04"))


@pytest.mark.parametrize(
    ("aggregate", "allowed"),
    [
        ('revenue = { sum = "quantity * unit_price", type = "numeric(12,2)" }', "numeric"),
        ('price_total = { sum = "unit_price", type = "double precision" }', "numeric"),
        ('units = { sum = "quantity", type = "integer" }', "bigint or numeric"),
        ('units = { sum = "quantity", type = "numeric(12,0)" }', "bigint or numeric"),
        ('lines = { count = true, type = "integer" }', "bigint or numeric"),
    ],
)
def test_a_total_that_would_round_or_overflow_is_refused_when_the_file_is_read(aggregate: str, allowed: str) -> None:
    with pytest.raises(PipelineFileError, match=rf"summaries\.2\.aggregates\.\w+\.type: .* exactly .*; use {allowed}$"):
        parse_pipeline(_invoices_with(f"aggregates.{aggregate}"))


@pytest.mark.parametrize(
    "aggregate",
    [
        'revenue = { sum = "quantity * unit_price", type = "numeric" }',
        'units = { sum = "quantity", type = "numeric" }',
        'units = { sum = "quantity", type = "bigint" }',
        'lines = { count = true, type = "numeric" }',
        'cheapest = { min = "unit_price", type = "numeric(12,2)" }',  # min and max commute with rounding
    ],
)
def test_a_total_held_exactly_and_other_aggregates_keep_their_type(aggregate: str) -> None:
    spec = parse_pipeline(_invoices_with(f"aggregates.{aggregate}"))
    name, chosen = aggregate.split(" = ", 1)[0], aggregate.split('type = "')[1].split('"', maxsplit=1)[0]
    shape = next(shape for shape in WritePlan(spec).summary_shapes() if shape.name == "extra_totals")
    assert {column.name: column.type for column in shape.columns}[name] == chosen


def test_bigint_holds_a_sum_of_any_integer_column() -> None:
    """A field without bounds inside 32 bits is a bigint column; its sum may still be a bigint."""
    data = _invoices_with('aggregates.units = { sum = "quantity", type = "bigint" }')
    fields = data["fields"]
    assert isinstance(fields, dict)
    fields["quantity"] = {"type": "integer"}  # unbounded: a bigint column
    spec = parse_pipeline(data)
    assert spec.column_type("quantity") == "bigint"
    shape = next(shape for shape in WritePlan(spec).summary_shapes() if shape.name == "extra_totals")
    assert {column.name: column.type for column in shape.columns}["units"] == "bigint"


def test_a_name_ending_in_a_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="not a safe identifier"):
        check_identifier("items\n", "table")
    with pytest.raises(ValueError, match="unsupported SQL type"):
        check_sql_type("integer\n")
    with pytest.raises(ValueError, match="not a valid Kafka topic name"):
        check_topic("orders\n")
