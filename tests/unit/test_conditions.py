"""Fast checks written as conditions (pipeline/conditions.py): the inlined text and the check made
from it are the same test, renaming touches identifiers only, and every registered condition accepts
only values its type's exact check returns unchanged."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.conditions import Condition, Conversion, as_check, as_fast
from pipeline.field_types import FIELD_TYPES, MISSING, FieldError, FieldType
from pipeline.spec import FieldSpec

SHORT = Condition("type(value) is str and len(value) <= high", {"high": 3})


def test_the_check_made_from_a_condition_returns_the_value_or_missing() -> None:
    check = as_check(SHORT, MISSING)
    assert check("abc") == "abc"
    assert check("abcd") is MISSING
    assert check(12) is MISSING


def test_inlining_renames_whole_identifiers_and_keeps_constants_as_values() -> None:
    condition = Condition("value_count == value and highest > high", {"high": 1, "highest": 2})
    text, namespace = condition.inlined("v3", "c3_")
    assert text == "value_count == v3 and c3_highest > c3_high"
    assert namespace == {"c3_high": 1, "c3_highest": 2}


@pytest.mark.parametrize("name", ["value", "High", "1st", "a-b", ""])
def test_a_constant_must_be_a_lowercase_identifier_other_than_value(name: str) -> None:
    with pytest.raises(ValueError, match="condition constant"):
        Condition("value", {name: 1})


def test_a_field_type_takes_a_fast_check_or_a_condition_not_both() -> None:
    def condition(rules: Any) -> Condition:
        return SHORT

    with pytest.raises(ValueError, match="one of a fast check, a condition, a conversion"):
        FieldType("both", lambda rules: "text", lambda rules: str, lambda rules: str, condition=condition)
    kind = FieldType("short", lambda rules: "text", lambda rules: str, condition=condition)
    assert kind.fast is not None and kind.fast(FieldSpec(type="string"))("ab") == "ab"


SPECS = [
    FieldSpec(type="string"),
    FieldSpec(type="string", min_length=1, max_length=4),
    FieldSpec(type="integer"),
    FieldSpec(type="integer", min=Decimal(-5), max_exclusive=Decimal("7.5"), nonzero=True),
    FieldSpec(type="uuid"),
]
VALUES = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from(["00000000-0000-0000-0000-00000000000A", "0000000-00000-0000-0000-000000000000", True, 0, None]),
    st.uuids().map(str),
    st.floats(allow_nan=True),
)


@settings(max_examples=1500, deadline=None, database=None, derandomize=True)
@given(value=VALUES)
def test_every_registered_condition_accepts_only_what_its_check_returns_unchanged(value: Any) -> None:
    for spec in SPECS:
        kind = FIELD_TYPES[spec.type]
        assert kind.condition is not None and kind.fast is not None
        accepted = kind.fast(spec)(value)
        if accepted is MISSING:
            continue
        assert accepted is value
        try:
            checked = kind.check(spec)(value)
        except FieldError as exc:
            raise AssertionError(f"{spec.type} accepted {value!r}, which its check refuses: {exc}") from None
        assert checked == value and type(checked) is type(value)


DECIMALS = [
    FieldSpec(type="decimal"),
    FieldSpec(type="decimal", precision=14, scale=4, min=Decimal(0), max_exclusive=Decimal(10**9)),
    FieldSpec(type="decimal", precision=6, scale=2),  # digits before the point counted: no bounds
    FieldSpec(type="decimal", precision=4, scale=4, min=Decimal("-0.5"), max=Decimal("0.5"), nonzero=True),
]


@settings(max_examples=1500, deadline=None, database=None, derandomize=True)
@given(value=st.one_of(st.floats(), st.decimals(places=3, allow_nan=False).map(float), st.integers(-(10**6), 10**6)))
def test_the_decimal_fast_check_returns_what_its_exact_check_returns(value: Any) -> None:
    # Not a condition (it returns text, not the value): the same property, for the text it returns.
    for spec in DECIMALS:
        kind = FIELD_TYPES["decimal"]
        assert kind.fast is not None
        accepted = kind.fast(spec)(value)
        if accepted is not MISSING:
            assert accepted == kind.check(spec)(value), (spec, value)


def test_string_literals_and_attributes_are_not_renamed() -> None:
    condition = Condition('value.real == high and "value high" != value', {"high": 2})
    text, _ = condition.inlined("v0", "c0_")
    assert text == 'v0.real == c0_high and "value high" != v0'
    check = as_check(Condition("value.real == missing", {"missing": 4}), MISSING)  # a constant named `missing`
    assert check(4) == 4 and check(5) is MISSING


def test_a_type_derived_with_replace_takes_its_new_condition() -> None:
    import dataclasses

    longer = dataclasses.replace(
        FIELD_TYPES["string"], name="word", condition=lambda rules: Condition("type(value) is str and len(value) > 3")
    )
    assert longer.fast is not None and longer.fast(FieldSpec(type="string"))("abcd") == "abcd"
    assert longer.fast(FieldSpec(type="string"))("abc") is MISSING


CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@settings(max_examples=3000, deadline=None, database=None, derandomize=True)
@given(
    base=st.uuids().map(str),
    edits=st.lists(
        st.tuples(st.integers(0, 36), st.sampled_from([*"0129afAFgxX?- _\x00\u00e9\u0660\ud800\U0001f600", ""])),
        max_size=3,
    ),
)
def test_the_uuid_condition_holds_exactly_for_the_canonical_spelling(base: str, edits: list[tuple[int, str]]) -> None:
    # The condition is a byte translation, not the regular expression it replaced: both must agree on
    # near-misses (a wrong digit or case, a misplaced hyphen, non-ASCII look-alikes, a lone surrogate),
    # and the condition must never raise.
    value = base
    for at, char in edits:
        value = value[:at] + char + value[at + 1 :]
    fast = FIELD_TYPES["uuid"].fast
    assert fast is not None
    accepted = fast(FieldSpec(type="uuid"))(value) is not MISSING
    assert accepted == (CANONICAL_UUID.fullmatch(value) is not None), repr(value)
    if accepted:
        assert str(uuid.UUID(value)) == value


def test_a_conversion_is_inlined_with_its_own_names_renamed_and_its_function_is_the_same_text() -> None:
    conversion = Conversion(
        "result = missing\nif value.real > low:  # value\n    doubled = value * 2\n    result = doubled",
        {"low": 1},
        frozenset({"doubled"}),
    )
    lines, namespace = conversion.inlined("v3", "w", "c3_", MISSING)
    assert lines == [
        "w = c3_missing",
        "if v3.real > c3_low:  # value",
        "    c3_doubled = v3 * 2",
        "    w = c3_doubled",
    ]
    assert namespace == {"c3_low": 1, "c3_missing": MISSING}
    fast = as_fast(conversion, MISSING)
    assert fast(5) == 10 and fast(1) is MISSING
    for bad in ("return value", "result = (lambda: value)()", "def f(): pass", "import os\nresult = value"):
        with pytest.raises(ValueError, match="plain statements"):
            Conversion(bad)
    with pytest.raises(ValueError, match="conversion name"):
        Conversion("result = value", {"result": 1})


@pytest.mark.parametrize(
    ("statements", "refused"),
    [
        ("seq = value\nresult = value", "seq"),  # would bind the reader's own variable
        ("result = other", "other"),  # would read one
        ("len = 3\nresult = value", "len"),  # would shadow a builtin the other fields' checks call
        ("try:\n    result = int(value)\nexcept ValueError as error:\n    result = missing", "error"),
        ("for item in value:\n    result = item", "item"),
        ("result = dict(value=value)", "keyword argument"),
        ('result = f"{value}"', "strings"),
        ("result = [seq for _ in (1,)][0]", "comprehension"),  # a scope of its own, read past the check
        ("result = next(v0 for _ in (1,))", "generator expression"),
        ("value = None\nresult = missing", "value"),  # the reader reads the value again after it
        ("(value := 3)\nresult = value", "value"),
        ("result = eval('seq')", "eval"),  # reaches the reader's variables by name, past any renaming
        ("result = locals()['record']", "locals"),
    ],
)
def test_a_conversion_names_every_name_it_binds_or_reads(statements: str, refused: str) -> None:
    # Its names are renamed when it is written into a reader's body: an undeclared one would not be,
    # and would read or bind the reader's own variables (the row's values) without a word.
    with pytest.raises(ValueError, match=refused):
        Conversion(statements)


def test_a_conversion_that_leaves_its_result_unset_leaves_the_value_to_the_exact_check() -> None:
    import dataclasses

    from pipeline.field_types import register, unregister
    from pipeline.row_compiler import compile_struct_row

    text_only = Conversion("if type(value) is str:\n    result = value")
    assert as_fast(text_only, MISSING)(3) is MISSING and as_fast(text_only, MISSING)("a") == "a"
    register(dataclasses.replace(FIELD_TYPES["string"], name="text_only", condition=None,
                                 conversion=lambda rules: text_only))  # fmt: skip
    try:
        row = compile_struct_row({"price": FieldSpec(type="decimal"), "note": FieldSpec(type="text_only")})
        event = type("Event", (), {"f0": 1.5, "f1": 3})()
        try:
            read = row(event, 1, ())
        except Exception:  # the contract: raising means the reference path decides
            read = None
        # Never the price's converted value for the note, which a shared result variable would give.
        assert read is None
        assert row(type("Event", (), {"f0": 1.5, "f1": "x"})(), 1, ()) == (1, "1.5", "x")
    finally:
        unregister("text_only")


TIMESTAMPS = st.one_of(
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())).map(lambda moment: moment.isoformat()),
    st.datetimes().map(lambda moment: moment.isoformat(sep=" ", timespec="milliseconds") + "Z"),
    st.text(alphabet="0123456789-:T+Z. ", min_size=8, max_size=45),
    st.sampled_from(["2026-01-01", "2026-01-01T00:00:00+24:00", "2026-02-30T00:00:00Z", "x" * 20, 20260101]),
)


@settings(max_examples=3000, deadline=None, database=None, derandomize=True)
@given(value=TIMESTAMPS)
def test_the_timestamp_conversion_returns_what_its_exact_check_returns(value: Any) -> None:
    kind = FIELD_TYPES["timestamp"]
    assert kind.fast is not None
    converted = kind.fast(FieldSpec(type="timestamp"))(value)
    if converted is MISSING:
        return
    checked = kind.check(FieldSpec(type="timestamp"))(value)
    assert converted == checked and repr(converted) == repr(checked) and converted.tzinfo is not None
