"""The struct reader's rows judged against the reference path's (pipeline/struct_reader.py's contract),
for the tests of the struct reader and of the lookup keys it stages."""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.fields import FieldError
from pipeline.row_compiler import StagedKeys, compile_row
from pipeline.spec import PipelineSpec
from pipeline.struct_reader import StructReader

RECORD = ("t", 3, 100)  # the items of a record the readers copy after the fields


def same(got: tuple[Any, ...], want: tuple[Any, ...]) -> bool:
    """Equal value by value, of the same type and spelling (0.0 and -0.0 differ)."""
    return len(got) == len(want) and all(
        type(a) is type(b) and repr(a) == repr(b) for a, b in zip(got, want, strict=True)
    )


def reference(spec: PipelineSpec, value: Any, keys: StagedKeys = ()) -> tuple[Any, ...] | None:
    """The reference path's row (seq 7, record `RECORD`), or None where it gives none (invalid JSON, not
    an object, a field refused)."""
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(event) is not dict:
        return None
    try:
        return compile_row(spec.fields, (0, 1, 2), keys)(event, 7, RECORD)
    except FieldError:
        return None


def assert_agrees(spec: PipelineSpec, reader: StructReader, value: Any, keys: StagedKeys = ()) -> bool:
    """The struct reader's row for `value` is None or the reference path's; True when it gave one."""
    got = reader.read(value, 7, RECORD)
    if got is None:
        return False
    want = reference(spec, value, keys)
    assert want is not None, ("the struct reader wrote what the reference path refuses", value, got)
    assert same(got, want), (value, got, want)
    return True
