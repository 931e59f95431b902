"""The types a running total may be stored as. Pure.

A `sum` or `count` column is merged by adding each window's total to the stored one
(`t.x + excluded.x`), and each window's total is cast to the column's type before it is added. A type
that rounds (fewer decimal places, an integer type over fractions, `real` or `double precision` over
exact numbers) makes the stored total depend on where windows ended: the same messages would add up
to another total after a restart, a rebalance or a bisection. So a pipeline may only choose, for such
a column, a type that holds every total of its operand exactly (for `double precision`, as exactly as
floating point adds; `bigint` over integers fails past 2^63, never rounds); other aggregates (min,
max, last) commute with rounding and may take any type.
"""

from __future__ import annotations

from pipeline.spec import Aggregate, PipelineSpec

INTEGERS = frozenset({"smallint", "integer", "bigint"})
# Exact for a total of integers (a count, a sum of an integer column): bigint too, as the total's own
# type for smallint and integer operands; past 2^63 it would overflow, not round.
OF_INTEGERS = ("bigint", "numeric")
# The total's type without a `type` (aggregates.py: _widened) → the types that hold every such total.
EXACT_TOTALS = {"bigint": OF_INTEGERS, "numeric": ("numeric",), "double precision": ("double precision",)}


def operand_type(spec: PipelineSpec, agg: Aggregate) -> str | None:
    """The SQL type of an aggregate's operand (None without one)."""
    expression = agg.expression()
    if expression is None:
        return None
    if expression.is_bare_name:
        return spec.column_type(expression.names[0])
    types = {spec.column_type(name) for name in expression.names}
    return "double precision" if types & {"real", "double precision"} else "numeric"


def lossy_totals(spec: PipelineSpec) -> list[str]:
    """One line per additive aggregate whose `type` cannot hold every total exactly (empty: none)."""
    problems = []
    for index, summary in enumerate(spec.summaries):
        for name, agg in summary.aggregates.items():
            if agg.type is None or not agg.kind.additive:
                continue
            operand = operand_type(spec, agg)
            natural = agg.kind.result_type(operand)
            exact = OF_INTEGERS if operand in INTEGERS else EXACT_TOTALS.get(natural, (natural,))
            if agg.type not in exact:
                problems.append(
                    f"  summaries.{index}.aggregates.{name}.type: {agg.type!r} cannot hold every {agg.function} "
                    f"of {agg.operand or 'rows'} exactly (each window's total is cast to it, then added: totals "
                    f"would depend on where windows end, or overflow); use {' or '.join(exact)}"
                )
    return problems
