"""pipeline.struct_forms: msgspec taking a value as a field's struct form, then the residual condition,
say yes exactly when the field type's whole condition does."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from typing import Any

import msgspec
import pydantic
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipeline.conditions import Condition, as_check
from pipeline.field_types import FIELD_TYPES, INT64_MAX, INT64_MIN, MISSING, register, unregister
from pipeline.spec import FieldSpec
from pipeline.struct_forms import struct_form
from pipeline.struct_reader import StructReader

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=80)
    | st.sampled_from(["099950d8-36f6-45cc-81e7-4ef5e8e25d94", "099950D8-36f6-45cc-81e7-4ef5e8e25d94", "a\x00b"]),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)
LENGTH = st.none() | st.integers(min_value=0, max_value=70)
BOUND = st.none() | st.integers(min_value=-(2**65), max_value=2**65).map(Decimal) | st.decimals(-1e6, 1e6, places=2)


@st.composite
def field_specs(draw: st.DrawFn) -> FieldSpec:
    kind = draw(st.sampled_from(["string", "integer", "uuid"]))
    rules: dict[str, Any] = {}
    if kind == "string":
        rules = {"min_length": draw(LENGTH), "max_length": draw(LENGTH.filter(lambda n: n != 0))}
    elif kind == "integer":
        rules = {rule: draw(BOUND) for rule in ("min", "max", "min_exclusive", "max_exclusive")}
        rules["nonzero"] = draw(st.booleans())
    try:
        return FieldSpec(type=kind, **rules)
    except pydantic.ValidationError:  # rules that contradict each other: not a pipeline anyone can load
        assume(False)
        raise


def parsed(form_type: Any, value: Any) -> tuple[bool, Any]:
    """Whether msgspec takes `value`, written as JSON (by the standard library: orjson stops at 64-bit
    integers), as `form_type`; and what it read."""
    try:
        return True, msgspec.json.decode(json.dumps(value), type=form_type)
    except msgspec.ValidationError:
        return False, None


def edges(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Values at and just past the edges of `spec`'s rules, where a wrong bound would show."""
    condition = FIELD_TYPES[spec.type].condition
    constants = condition(spec).constants if condition is not None else {}
    if spec.type == "integer":
        low, high = constants["low"], constants["high"]
        return st.sampled_from([0, 1, -1, low - 1, low, low + 1, high - 1, high, high + 1])
    if spec.type == "string":
        lengths = [n for n in (constants["low"], constants["high"]) if n != float("inf")]
        sizes = st.sampled_from([max(0, n + d) for n in lengths for d in (-1, 0, 1)] or [0])
        return st.tuples(sizes, st.sampled_from(["x", "\x00", "\U0001f600"])).map(lambda t: t[1] * t[0])
    return st.nothing()


@settings(max_examples=3_000, derandomize=True, deadline=None, database=None)
@given(data=st.data(), spec=field_specs())
def test_msgspec_and_the_residual_condition_say_yes_exactly_when_the_whole_condition_does(
    data: st.DataObject, spec: FieldSpec
) -> None:
    value = data.draw(JSON_VALUES | edges(spec))
    condition = FIELD_TYPES[spec.type].condition
    assert condition is not None
    whole = as_check(condition(spec), MISSING)(value) is not MISSING
    form = struct_form(spec)
    if form is None:  # no form: the struct reader checks the whole condition, nothing to compare
        return
    taken, read = parsed(form.parsed, value)
    assert not taken or read == value  # msgspec reads the value as orjson wrote it
    assert (taken and as_check(form.residual, MISSING)(read) is not MISSING) == whole, (spec, value)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # Rules the spec refuses (built past its validation): still no form msgspec would refuse.
        (FieldSpec.model_construct(type="string", min_length=3, max_length=2), None),
        (FieldSpec(type="integer", min=Decimal(2**64)), None),  # beyond msgspec's 64-bit bounds
        (FieldSpec.model_construct(type="integer", min=Decimal(5), max=Decimal(3)), None),
        (FieldSpec(type="integer", min=Decimal(INT64_MIN), max=Decimal(INT64_MAX)), "True"),
        (FieldSpec(type="integer", nonzero=True), "value != 0"),
        (FieldSpec(type="decimal"), None),  # a conversion: checked in full
        (FieldSpec(type="enum", values=("a",)), None),
    ],
)
def test_a_form_is_given_only_where_msgspec_can_hold_the_bounds(spec: FieldSpec, expected: str | None) -> None:
    form = struct_form(spec)
    assert (form.residual.expression if form is not None else None) == expected


def test_a_type_whose_condition_is_replaced_has_no_form() -> None:
    original = FIELD_TYPES["string"]
    register(dataclasses.replace(original, condition=lambda rules: Condition("type(value) is str")))
    try:
        assert struct_form(FieldSpec(type="string", max_length=5)) is None
    finally:
        register(original)
    assert struct_form(FieldSpec(type="string", max_length=5)) is not None


def test_a_condition_that_cannot_be_hashed_keeps_the_fast_path() -> None:
    @dataclasses.dataclass  # not frozen: unhashable
    class ShortCode:
        limit: int

        def __call__(self, rules: Any) -> Condition:
            return Condition("type(value) is str and len(value) <= limit", {"limit": self.limit})

    register(dataclasses.replace(FIELD_TYPES["string"], name="code", condition=ShortCode(8)))
    try:
        assert struct_form(FieldSpec(type="code")) is None
        reader = StructReader({"a": FieldSpec(type="code"), "b": FieldSpec(type="string")})
        assert reader.read(b'{"a":"abc","b":"x"}', 0, ()) == (0, "abc", "x")
    finally:
        unregister("code")


@pytest.mark.parametrize("document", [b'{"a":"x"}', b'{"a":"x","b":null}', b'{"a":"x","b":"y","n":null}'])
def test_an_optional_field_left_out_or_null_stays_on_the_fast_path(document: bytes) -> None:
    fields = {
        "a": FieldSpec(type="string", max_length=4),
        "b": FieldSpec(type="string", required=False, max_length=4, default="d"),
        "n": FieldSpec(type="integer", required=False, nonzero=True),
    }
    row = StructReader(fields).read(document, 0, ())
    assert row is not None and row[1] == "x" and row[2] in {"d", "y"} and row[3] is None
