"""What each field type must accept and store, written again from the README's rules for the
decoder's property tests (pure). It does not import pipeline.field_types: the product must not
judge itself.

- `judge(spec, value)`: the verdict on one decoded JSON value (or `ABSENT`): `(True, stored)` or
  `(False, None)`;
- `obeys(spec, stored)`: a stored value satisfies every rule of its field;
- `reads_exactly(fields)`: the pipeline reads JSON numbers exactly (a decimal of precision above
  15, or of none), instead of as doubles.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.spec import FieldSpec

ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()
INT64 = (-(2**63), 2**63 - 1)
PG_SCALE, PG_INTEGER_DIGITS = 16_383, 131_072  # PostgreSQL's unconstrained numeric


def reads_exactly(fields: dict[str, FieldSpec]) -> bool:
    return any(f.type == "decimal" and (f.precision is None or f.precision > 15) for f in fields.values())


def judge(spec: FieldSpec, value: Any) -> tuple[bool, Any]:
    if value is ABSENT or value is None:
        if spec.required:
            return False, None
        return (True, None) if spec.default is None else judge(spec, spec.default)
    verdict = _JUDGES[spec.type](spec, value)
    return (False, None) if verdict is _REFUSED else (True, verdict)


def obeys(spec: FieldSpec, stored: Any) -> bool:
    if stored is None:
        return not spec.required and spec.default is None
    if spec.type == "decimal":  # a text PostgreSQL parses: no more places than the scale
        places = len(stored.partition(".")[2]) if type(stored) is str else math.inf
        return places <= _scale(spec) and judge(spec, Decimal(stored))[0]
    if spec.type == "timestamp":
        return type(stored) is datetime and stored.tzinfo is not None
    if spec.type == "uuid":  # the text as sent when canonical, else normalised
        return type(stored) is str and judge(spec, stored)[0]
    return judge(spec, stored) == (True, stored)


_REFUSED: Any = object()


def _within(spec: FieldSpec, number: Any, cast: Callable[[Decimal], Any]) -> bool:
    if spec.nonzero and number == 0:
        return False
    low, high, above, below = (
        None if b is None else cast(b) for b in (spec.min, spec.max, spec.min_exclusive, spec.max_exclusive)
    )
    return (
        (low is None or number >= low)
        and (high is None or number <= high)
        and (above is None or number > above)
        and (below is None or number < below)
    )


def _string(spec: FieldSpec, value: Any) -> Any:
    if type(value) is not str or "\x00" in value:
        return _REFUSED
    if not (spec.min_length or 0) <= len(value) <= (spec.max_length or math.inf):
        return _REFUSED
    return value


def _integer(spec: FieldSpec, value: Any) -> Any:
    if type(value) is not int or not INT64[0] <= value <= INT64[1]:
        return _REFUSED
    return value if _within(spec, value, Decimal) else _REFUSED


def _scale(spec: FieldSpec) -> int:
    if spec.scale is not None:
        return spec.scale
    return 0 if spec.precision is not None else PG_SCALE


def _decimal(spec: FieldSpec, value: Any) -> Any:
    if type(value) is int:
        number = Decimal(value)
    elif type(value) is float:
        number = Decimal(repr(value))
    elif type(value) is Decimal:
        number = value
    else:
        return _REFUSED
    if not number.is_finite():
        return _REFUSED
    scale = _scale(spec)
    # Places that matter: 2.50 has one. Trailing zeros beyond the scale are dropped when stored.
    places = max(0, -int(number.as_tuple().exponent))
    text = format(number, "f")
    while places > scale and text.endswith("0"):
        text, places = text[:-1], places - 1
    text = text.rstrip(".")
    if places > scale:
        return _REFUSED
    integer_digits = PG_INTEGER_DIGITS if spec.precision is None else spec.precision - scale
    whole = text.lstrip("-").partition(".")[0].lstrip("0")
    if len(whole) > integer_digits:
        return _REFUSED
    return text if _within(spec, number, Decimal) else _REFUSED


def _float(spec: FieldSpec, value: Any) -> Any:
    if type(value) not in (int, float, Decimal) or (type(value) is Decimal and not value.is_finite()):
        return _REFUSED
    try:
        number = float(value)
    except OverflowError:
        return _REFUSED
    if not math.isfinite(number):
        return _REFUSED
    return number if _within(spec, number, float) else _REFUSED


def _boolean(spec: FieldSpec, value: Any) -> Any:
    return value if type(value) is bool else _REFUSED


def _uuid(spec: FieldSpec, value: Any) -> Any:
    if type(value) is not str or len(value) > 45:
        return _REFUSED
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return _REFUSED


def _timestamp(spec: FieldSpec, value: Any) -> Any:
    if type(value) is not str or len(value) > 64:
        return _REFUSED
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return _REFUSED
    return moment if moment.tzinfo is not None else _REFUSED


def _enum(spec: FieldSpec, value: Any) -> Any:
    return value if type(value) is str and value in (spec.values or ()) else _REFUSED


_JUDGES = {
    "string": _string,
    "integer": _integer,
    "decimal": _decimal,
    "float": _float,
    "boolean": _boolean,
    "uuid": _uuid,
    "timestamp": _timestamp,
    "enum": _enum,
}
