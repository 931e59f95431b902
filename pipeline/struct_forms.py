"""What msgspec checks of a field while it parses a document for the struct reader, and what is left.

The struct reader (pipeline.struct_reader) has msgspec parse each field's value as a type, in C. For
the string, integer and UUID types, that type can carry the bounds of the field's condition too (a
string's length, an integer's range), so that the generated row reader is left with the rest of the
condition only: `"\\x00" not in value` for a string, `value != 0` or nothing for an integer, the
hexadecimal shape for a UUID. For the invoice pipeline that is 0.2 µs per event less.

Contract: `form = struct_form(spec)`, when not None, is made from the condition the field's type has
now (the registry's entry), and for every JSON value `x`:

    msgspec accepts `x` as `form.parsed`  and  `form.residual` holds for `x`
        exactly when  the type's condition holds for `x`.

A value msgspec refuses sends its document to the reference path, which gives the verdict, as any
value the condition does not take does. A type with no form here (its condition replaced, a
conversion, no condition) is parsed as the struct reader always parsed it, and its condition or
conversion runs in full. tests/unit/test_struct_forms.py holds the contract on generated values.

One cost of checking while parsing: msgspec checks every occurrence of a key written twice, so
`{"id": "", "id": "a"}` (the last value counts, and it is valid) takes the reference path; a stream
made of such documents rests the fast path (pipeline.decode). The verdicts are the same.
Pure.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from pipeline.conditions import Condition
from pipeline.field_types import FIELD_TYPES, INT64_MAX, INT64_MIN, integer_condition, string_condition, uuid_condition
from pipeline.spec import FieldSpec


@dataclass(frozen=True)
class StructForm:
    """The msgspec type a field's value is parsed as (without null: the reader adds it for a field
    that may be left out), and the condition left to check once msgspec took the value."""

    parsed: Any
    residual: Condition


def _string(spec: FieldSpec, condition: Condition) -> StructForm | None:
    low, high = condition.constants["low"], condition.constants["high"]
    if low > min(high, _LONGEST):  # the condition never holds (and msgspec's lengths stop at 64 bits)
        return None
    lengths = {"min_length": low} | ({"max_length": high} if high <= _LONGEST else {})
    return StructForm(Annotated[str, msgspec.Meta(**lengths)], Condition('"\\x00" not in value'))


def _integer(spec: FieldSpec, condition: Condition) -> StructForm | None:
    low, high = condition.constants["low"], condition.constants["high"]
    if not INT64_MIN <= low <= high <= INT64_MAX:  # an empty range (msgspec's bounds stop at 64 bits)
        return None
    left = Condition("value != 0" if spec.nonzero else "True")
    return StructForm(Annotated[int, msgspec.Meta(ge=low, le=high)], left)


def _uuid(spec: FieldSpec, condition: Condition) -> StructForm:
    shape = Condition("value.isascii() and value.encode().translate(table) == shape", condition.constants)
    return StructForm(Annotated[str, msgspec.Meta(min_length=36, max_length=36)], shape)


# Longer than any string can be: a greater maximum is none.
_LONGEST = sys.maxsize
# Keyed by the function that makes the condition, compared by identity (a registered condition need not
# be hashable): a type whose condition is replaced gets no form.
_FORMS: tuple[tuple[Callable[[Any], Condition], Callable[[FieldSpec, Condition], StructForm | None]], ...] = (
    (string_condition, _string),
    (integer_condition, _integer),
    (uuid_condition, _uuid),
)


def struct_form(spec: FieldSpec) -> StructForm | None:
    """The form of `spec`'s value in the struct reader (see the module docstring), or None: parse it
    as any value of its kind and check it in full."""
    made = FIELD_TYPES[spec.type].condition
    form = next((form for maker, form in _FORMS if maker is made), None)
    return None if form is None or made is None else form(spec, made(spec))
