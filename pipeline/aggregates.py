"""The aggregate functions a summary column can use: one registry entry per function.

An entry says how a pipeline file names the function and what it takes (an expression over raw
columns, a bare column, or nothing), the summary columns it needs and their types, and its SQL: how
a batch of new rows computes the value (`select`) and how that merges into the stored one (`merge`,
with `t.<col>` the stored and `excluded.<col>` the incoming value). Merges must not depend on the
order in which batches arrive: that is what makes the summaries exact under replays and rebalances.

Adding a function is one `register(AggregateKind(...))` here, plus its test (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from psycopg import sql

from pipeline.registry import Registry
from pipeline.tables import Column

LAST_SUFFIX = "_at"
Operand = Literal["expression", "column", "none"]


@dataclass(frozen=True)
class Fold:
    """One summary column: how a batch computes it, and how it merges into the stored value."""

    column: str
    select: sql.Composable
    merge: sql.Composable


@dataclass(frozen=True)
class AggregateKind:
    """One aggregate function.

    `operand`: what the function's key takes in the pipeline file (`sum = "a * b"`: an expression;
    `last = "col"`: a bare column; `count = true`: nothing). `ordered_by`: whether it needs `by`, a
    timestamp column ordering the rows. `result_type(input_type)` gives the column type from the
    operand's SQL type (None without an operand). `additive`: merged by adding each batch's value to
    the stored one, so the column's type must hold every total exactly (pipeline/total_types.py).
    `columns` and `folds` give the table columns and the SQL of a column named `name`; `value` is the
    rendered operand, `by` the rendered `by` column.
    """

    name: str
    operand: Operand
    result_type: Callable[[str | None], str]
    folds: Callable[[str, sql.Composable | None, sql.Composable | None], list[Fold]]
    columns: Callable[[str, str, str | None], list[Column]]
    ordered_by: bool = False
    additive: bool = False


AGGREGATES: Registry[AggregateKind] = Registry()
register = AGGREGATES.register
unregister = AGGREGATES.unregister


def _stored(name: str) -> tuple[sql.Identifier, sql.Identifier]:
    return sql.Identifier("t", name), sql.Identifier("excluded", name)


def _widened(sql_type: str | None) -> str:
    """A sum's type: wide enough that adding many values cannot overflow."""
    if sql_type in {"smallint", "integer"}:
        return "bigint"
    if sql_type in {"real", "double precision"}:
        return "double precision"
    return "numeric"


def _additive(name: str, result: str, by_type: str | None) -> list[Column]:
    return [Column(name, result, not_null=True, default="0")]


def _nullable(name: str, result: str, by_type: str | None) -> list[Column]:
    return [Column(name, result, not_null=False)]


def _same(sql_type: str | None) -> str:
    return sql_type or "numeric"


def _sum(name: str, value: sql.Composable | None, by: sql.Composable | None) -> list[Fold]:
    current, incoming = _stored(name)
    return [Fold(name, sql.SQL("COALESCE(sum({}), 0)").format(value), sql.SQL("{} + {}").format(current, incoming))]


def _count(name: str, value: sql.Composable | None, by: sql.Composable | None) -> list[Fold]:
    current, incoming = _stored(name)
    return [Fold(name, sql.SQL("count(*)"), sql.SQL("{} + {}").format(current, incoming))]


def _extreme(function: str, merge: str) -> Callable[[str, sql.Composable | None, sql.Composable | None], list[Fold]]:
    def folds(name: str, value: sql.Composable | None, by: sql.Composable | None) -> list[Fold]:
        current, incoming = _stored(name)
        return [
            Fold(
                name,
                sql.SQL("{}({})").format(sql.SQL(function), value),
                sql.SQL("{}({}, {})").format(sql.SQL(merge), current, incoming),
            )
        ]

    return folds


def _last(name: str, value: sql.Composable | None, by: sql.Composable | None) -> list[Fold]:
    """The value of the row with the greatest (by, value), non-null values beating nulls on ties; the
    companion column `<name>_at` keeps that row's `by`."""
    at = name + LAST_SUFFIX
    current, incoming = _stored(name)
    current_at, incoming_at = _stored(at)
    pick = sql.SQL("(array_agg({v} ORDER BY {by} DESC, {v} DESC NULLS LAST))[1]").format(v=value, by=by)
    newer = sql.SQL(
        "CASE WHEN {cat} IS NULL OR {iat} > {cat} OR ({iat} = {cat} AND ({cur} IS NULL OR {inc} > {cur})) "
        "THEN {inc} ELSE {cur} END"
    ).format(cat=current_at, iat=incoming_at, cur=current, inc=incoming)
    return [
        Fold(name, pick, newer),
        Fold(at, sql.SQL("max({})").format(by), sql.SQL("GREATEST({}, {})").format(current_at, incoming_at)),
    ]


def _last_columns(name: str, result: str, by_type: str | None) -> list[Column]:
    return [Column(name, result, not_null=False), Column(name + LAST_SUFFIX, by_type or "", False)]


register(AggregateKind("sum", "expression", _widened, _sum, _additive, additive=True))
register(AggregateKind("count", "none", lambda _: "bigint", _count, _additive, additive=True))
register(AggregateKind("min", "expression", _same, _extreme("min", "LEAST"), _nullable))
register(AggregateKind("max", "expression", _same, _extreme("max", "GREATEST"), _nullable))
register(AggregateKind("last", "column", _same, _last, _last_columns, ordered_by=True))
