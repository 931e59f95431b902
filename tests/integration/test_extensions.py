"""docs/ARCHITECTURE.md's "How to add" recipes, followed to the letter: a toy field type and a toy
aggregate function, each one registry entry, used by a temporary pipeline against real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql

from pipeline import aggregates, field_types
from pipeline.aggregates import AggregateKind, Fold
from pipeline.field_types import MISSING, FieldError, FieldType, Rules
from pipeline.prepare import Preparer
from pipeline.records import Batch, Record, Rejection, RejectReason
from pipeline.rejects import RejectSink
from pipeline.spec_loader import load_pipeline
from pipeline.tables import Column
from pipeline.target import Target

# -- the toy field type: an even integer ---------------------------------------------------------------


def _even(rules: Rules) -> Any:
    def check(value: Any) -> Any:
        if type(value) is not int or value % 2:
            raise FieldError("must be an even integer")
        return value

    return check


def _fast_even(rules: Rules) -> Any:
    return lambda value: value if type(value) is int and not value % 2 else MISSING


EVEN = FieldType("even", lambda rules: "bigint", _even, _fast_even)


# -- the toy aggregate: the sum of squares ---------------------------------------------------------------


def _squares(name: str, value: sql.Composable | None, by: sql.Composable | None) -> list[Fold]:
    current, incoming = sql.Identifier("t", name), sql.Identifier("excluded", name)
    return [Fold(name, sql.SQL("sum(({v}) * ({v}))").format(v=value), sql.SQL("{} + {}").format(current, incoming))]


SUM_OF_SQUARES = AggregateKind(
    "sum_of_squares",
    "expression",
    result_type=lambda operand_type: "numeric",
    folds=_squares,
    columns=lambda name, result, by_type: [Column(name, result, not_null=True, default="0")],
)

PIPELINE = """
name = "toys"
topics = ["toys"]
group = "toys"
dead_letter_topic = "toys.dlq"

[fields]
event_id = { type = "uuid" }
team = { type = "string", min_length = 1 }
n = { type = "even" }

[raw]
table = "plays"
dedupe_key = ["event_id"]
[raw.columns]
event_id = "event_id"
team = "team"
n = "n"

[[summaries]]
table = "teams"
key = { team = "team" }
aggregates.squares = { sum_of_squares = "n" }
aggregates.plays = { count = true }
"""


class Collecting(RejectSink):
    def __init__(self) -> None:
        self.rejected: list[Rejection] = []

    def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
        self.rejected.extend(rejections)


@pytest.fixture
def toys(tmp_path: Path) -> Iterator[Path]:
    """The two entries registered, as the recipes say, for this test only."""
    field_types.register(EVEN)
    aggregates.register(SUM_OF_SQUARES)
    path = tmp_path / "toys.toml"
    path.write_text(PIPELINE)
    try:
        yield path
    finally:
        field_types.unregister("even")
        aggregates.unregister("sum_of_squares")


def test_a_new_field_type_and_aggregate_are_one_entry_each(toys: Path, database_url: str) -> None:
    spec = load_pipeline(toys)
    assert spec.fields["n"].sql_type() == "bigint"
    target, preparer = Target(spec, database_url), Preparer(spec, database_url)
    created, mismatches = target.init_tables()
    assert mismatches == [] and set(created) >= {"plays", "teams"}
    plays = [("red", 2), ("red", 4), ("blue", 6), ("red", 3), ("blue", -2)]
    records = [
        Record("toys", 0, offset, None, orjson.dumps({"event_id": str(uuid.uuid4()), "team": team, "n": n}))
        for offset, (team, n) in enumerate(plays)
    ]
    sink = Collecting()
    try:
        result = target.write(Batch(records, {("toys", 0): None}), preparer.prepare(records), sink)
    finally:
        target.close()
        preparer.close()
    assert result.inserted == 4 and result.summary_rows == {"teams": 2}
    assert [(r.record.offset, r.reason) for r in sink.rejected] == [(3, RejectReason.INVALID_EVENT)]
    assert "must be an even integer" in sink.rejected[0].message
    with psycopg.connect(database_url) as conn:
        teams = {str(team): (int(squares), int(plays)) for team, squares, plays in conn.execute(
            "SELECT team, squares, plays FROM teams")}  # fmt: skip
    assert teams == {"red": (4 + 16, 2), "blue": (36 + 4, 2)}


def test_without_their_entries_the_pipeline_is_refused_naming_them(tmp_path: Path) -> None:
    from pipeline.spec_loader import PipelineFileError

    path = tmp_path / "toys.toml"
    path.write_text(PIPELINE)
    with pytest.raises(PipelineFileError, match="unknown field type 'even'"):
        load_pipeline(path)
    path.write_text(PIPELINE.replace('type = "even"', 'type = "integer"'))
    with pytest.raises(PipelineFileError, match="exactly one of: sum, count, min, max, last"):
        load_pipeline(path)
