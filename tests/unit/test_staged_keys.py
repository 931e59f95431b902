"""Lookup keys staged by the row readers (pipeline/staged_keys.py, pipeline/row_compiler.py): the struct
reader computes them as the reference path does, after the fields and before the record's items."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given

from pipeline.lookup_spec import TRIM_CHARACTERS, normaliser
from pipeline.records import Record
from pipeline.spec import PipelineSpec
from pipeline.staged_keys import StagedKey
from pipeline.struct_reader import StructReader
from tests.support.decode_cases import ENTROPY, Entropy
from tests.support.struct_rows import RECORD, assert_agrees
from tests.unit.test_struct_reader import SETTINGS, flat_case


def staged_keys(fields: list[int]) -> list[tuple[int, StagedKey]]:
    """Lookup keys staged from `fields` (indexes), trimmed and lower-cased as vendor-invoices stages
    them: a value of another type than text makes them raise, as a value that is only blanks does."""
    return [(at, StagedKey(f"key{at}", normaliser(("trim", "lower")))) for at in fields]


@SETTINGS
@given(case=ENTROPY.map(lambda e: (*flat_case(e), e)))
def test_lookup_keys_staged_by_the_struct_reader_are_the_reference_paths(
    case: tuple[PipelineSpec, list[Record], Entropy],
) -> None:
    spec, records, e = case
    texts = [i for i, field in enumerate(spec.fields.values()) if field.type == "string"]
    texts = texts or list(range(len(spec.fields)))
    at = sorted({e.pick(texts) for _ in range(1 + e.below(2))}) if texts else []
    reader = StructReader(spec.fields, (0, 1, 2), staged_keys(at))
    learned = [event for r in records if r.value and type(event := orjson_or_none(r.value)) is dict]
    for event in learned:
        reader.learn(event)
    for r in records:
        if r.value and assert_agrees(spec, reader, r.value, staged_keys(at)):
            row = reader.read(r.value, 0, RECORD)  # the keys after the fields, before the record's items
            assert row is not None and len(row) == 1 + len(spec.fields) + len(at) + 3
            assert row[1 + len(spec.fields) : -3] == tuple(row[1 + i].strip(TRIM_CHARACTERS).lower() for i in at)


def orjson_or_none(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
