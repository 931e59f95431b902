"""A running total's column type must hold every total exactly (pipeline/total_types.py): each window's
total is cast to it before it is added, so a rounding or narrow type would make totals depend on where
windows end. And names that end in a newline are not names (pipeline/names.py)."""

from __future__ import annotations

import tomllib
from decimal import ROUND_HALF_EVEN, Decimal

import pytest

from pipeline.names import check_identifier, check_sql_type, check_topic
from pipeline.spec_loader import PipelineFileError, builtin_dir, parse_pipeline


def _invoices_with(aggregates: str) -> dict[str, object]:
    """The built-in invoice pipeline with one more summary holding these aggregates."""
    text = (builtin_dir() / "invoices.toml").read_text()
    text += f'\n[[summaries]]\ntable = "extra_totals"\nkey = {{ item_id = "item_id" }}\n{aggregates}\n'
    return tomllib.loads(text)


def test_a_total_rounded_per_window_depends_on_where_windows_end() -> None:
    """Why the rule exists: numeric(12,2) over 4-decimal prices, cast per window then added."""
    prices = [Decimal("0.0050")] * 4
    cent = Decimal("0.01")
    one_window = sum(prices, Decimal(0)).quantize(cent, ROUND_HALF_EVEN)
    four_windows = sum(p.quantize(cent, ROUND_HALF_EVEN) for p in prices)
    assert one_window != four_windows


@pytest.mark.parametrize(
    ("aggregate", "allowed"),
    [
        ('revenue = { sum = "quantity * unit_price", type = "numeric(12,2)" }', "numeric"),
        ('price_total = { sum = "unit_price", type = "double precision" }', "numeric"),
        ('units = { sum = "quantity", type = "integer" }', "bigint or numeric"),
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
    assert spec.summaries[2].table == "extra_totals"


def test_a_name_ending_in_a_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="not a safe identifier"):
        check_identifier("items\n", "table")
    with pytest.raises(ValueError, match="unsupported SQL type"):
        check_sql_type("integer\n")
    with pytest.raises(ValueError, match="not a valid Kafka topic name"):
        check_topic("orders\n")
