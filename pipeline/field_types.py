"""The field types a pipeline can declare: one registry entry per type.

An entry gives everything microbatch needs to know about a type, in one place:
- `rules`: which of the optional rules (`min`, `max_length`, `precision`…) it accepts;
- `sql_type(spec)`: the PostgreSQL type that holds every value it accepts;
- `check(spec)`: the exact validation (slow path): a decoded JSON value in, the value to write out,
  or `FieldError` with a reason that never quotes the value (it ends up in dead-letter headers);
- `fast(spec)`: optional: the common, valid case in a few comparisons, returning `MISSING` to ask
  the slow path. It must accept nothing that `check` refuses, and return what `check` would;
- `condition(spec)`: optional: a fast check that returns valid values unchanged, one Python
  expression (pipeline.conditions) that the compiled row readers inline; `fast` is made from it;
- `exact(spec)`: optional: True when the field needs the digits of a JSON number exactly as written
  (a double holds 15): the pipeline then reads fractional numbers as `decimal.Decimal`
  (pipeline.decode), and every check of a number must accept a Decimal.

A check must raise nothing but FieldError for any value, whatever the hook returned (the decoder
turns anything else into a rejection too, but the reason is then a bug's, not a rule's). Adding a
type is one `register(FieldType(...))` here, plus its test (docs/ARCHITECTURE.md). Pure.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from pipeline.conditions import Condition, Conversion, Inlined
from pipeline.registry import Registry

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DOUBLE_DIGITS = 15  # significant decimal digits a double always reproduces exactly
# PostgreSQL's unconstrained numeric: at most this many digits before and after the decimal point.
NUMERIC_INTEGER_DIGITS, NUMERIC_SCALE = 131_072, 16_383
MISSING: Any = object()
Check = Callable[[Any], Any]
# What str(uuid.UUID(text)) returns unchanged is lowercase ASCII whose bytes, hex digits made "x" and others
# but "-" made "?", are x8-x4-x4-x4-x12 (uuid_condition: one C pass; a regular expression took 3x as long).
_UUID_TABLE = bytes(ord("x") if chr(b) in "0123456789abcdef" else b if chr(b) == "-" else ord("?") for b in range(256))
LENGTHS = frozenset({"min_length", "max_length"})
BOUNDS = frozenset({"min", "max", "min_exclusive", "max_exclusive", "nonzero"})


class FieldError(ValueError):
    """A value does not satisfy its field's rules; str() is safe to log (no value in it)."""


class Rules(Protocol):
    """The rules of one declared field (pipeline.spec.FieldSpec)."""

    min_length: int | None
    max_length: int | None
    min: Decimal | None
    max: Decimal | None
    min_exclusive: Decimal | None
    max_exclusive: Decimal | None
    nonzero: bool
    precision: int | None
    scale: int | None
    values: tuple[str, ...] | None


@dataclass(frozen=True)
class FieldType:
    """One field type (see the module docstring)."""

    name: str
    sql_type: Callable[[Rules], str]
    check: Callable[[Rules], Check]
    fast: Callable[[Rules], Check] | None = None
    rules: frozenset[str] = frozenset()
    exact: Callable[[Rules], bool] | None = None
    condition: Callable[[Rules], Condition] | None = None
    conversion: Callable[[Rules], Conversion] | None = None

    def __post_init__(self) -> None:
        if (inlined := self.condition or self.conversion) is not None:
            if (self.fast is not None and not isinstance(self.fast, Inlined)) or (self.condition and self.conversion):
                raise ValueError(f"field type {self.name}: give one of a fast check, a condition, a conversion")
            # Made again on every construction: dataclasses.replace(kind, condition=...) stays consistent.
            object.__setattr__(self, "fast", Inlined(inlined, MISSING))


FIELD_TYPES: Registry[FieldType] = Registry()
register = FIELD_TYPES.register
unregister = FIELD_TYPES.unregister


def _range_checker(rules: Rules, cast: Callable[[Decimal], Any]) -> Callable[[Any], None]:
    """The numeric bounds and `nonzero`, with the bounds cast once to the value's type."""
    bounds: list[tuple[Any, Callable[[Any, Any], bool], str]] = []
    if rules.min is not None:
        bounds.append((cast(rules.min), lambda v, b: v < b, f"less than {rules.min}"))
    if rules.max is not None:
        bounds.append((cast(rules.max), lambda v, b: v > b, f"greater than {rules.max}"))
    if rules.min_exclusive is not None:
        bounds.append((cast(rules.min_exclusive), lambda v, b: v <= b, f"not greater than {rules.min_exclusive}"))
    if rules.max_exclusive is not None:
        bounds.append((cast(rules.max_exclusive), lambda v, b: v >= b, f"not less than {rules.max_exclusive}"))
    nonzero = rules.nonzero

    def check(value: Any) -> None:
        if nonzero and value == 0:
            raise FieldError("must not be zero")
        for bound, outside, reason in bounds:
            if outside(value, bound):
                raise FieldError(reason)

    return check


# -- string -------------------------------------------------------------------------------------------


def _string(rules: Rules) -> Check:
    low, high = rules.min_length, rules.max_length

    def check(value: Any) -> Any:
        if type(value) is not str:
            raise FieldError("must be a string")
        if "\x00" in value:
            raise FieldError("contains a NUL character, which PostgreSQL text cannot store")
        if high is not None and len(value) > high:
            raise FieldError(f"longer than {high} characters")
        if low is not None and len(value) < low:
            raise FieldError(f"shorter than {low} characters")
        return value

    return check


def string_condition(rules: Rules) -> Condition:
    low = rules.min_length or 0
    high = rules.max_length if rules.max_length is not None else math.inf
    expression = 'type(value) is str and low <= len(value) <= high and "\\x00" not in value'
    return Condition(expression, {"low": low, "high": high})


# -- integer ------------------------------------------------------------------------------------------


def _integer_bounds(rules: Rules) -> tuple[int, int]:
    """The bounds as exact integers: `min = 0.5` means 1, `max_exclusive = 10` means 9."""
    low, high = INT64_MIN, INT64_MAX
    if rules.min is not None:
        low = max(low, math.ceil(rules.min))
    if rules.min_exclusive is not None:
        low = max(low, math.floor(rules.min_exclusive) + 1)
    if rules.max is not None:
        high = min(high, math.floor(rules.max))
    if rules.max_exclusive is not None:
        high = min(high, math.ceil(rules.max_exclusive) - 1)
    return low, high


def _integer(rules: Rules) -> Check:
    in_range = _range_checker(rules, Decimal)

    def check(value: Any) -> Any:
        if type(value) is not int:
            raise FieldError("must be an integer")
        if not INT64_MIN <= value <= INT64_MAX:
            raise FieldError("outside the 64-bit integer range")
        in_range(value)
        return value

    return check


def integer_condition(rules: Rules) -> Condition:
    low, high = _integer_bounds(rules)
    nonzero = " and value != 0" if rules.nonzero else ""
    return Condition(f"type(value) is int and low <= value <= high{nonzero}", {"low": low, "high": high})


def _integer_sql(rules: Rules) -> str:
    # integer only when both ends are bounded within 32 bits (as declared: existing tables rely on it).
    low = rules.min if rules.min is not None else rules.min_exclusive
    high = rules.max if rules.max is not None else rules.max_exclusive
    fits32 = low is not None and high is not None and low >= INT32_MIN and high <= INT32_MAX
    return "integer" if fits32 else "bigint"


# -- decimal ------------------------------------------------------------------------------------------


def _scale(rules: Rules) -> int | None:
    """Decimal places allowed: `numeric(p)` is `numeric(p, 0)`; None: unconstrained numeric."""
    return rules.scale if rules.scale is not None or rules.precision is None else 0


def _places(number: Decimal) -> int:
    """Digits after the decimal point that are not trailing zeros: 1.50 has 1. Exact (no context)."""
    _, digits, exponent = number.as_tuple()
    if not isinstance(exponent, int) or exponent >= 0 or not any(digits):
        return 0
    return max(0, -exponent - (len(digits) - len(bytes(digits).rstrip(b"\0"))))


def _decimal(rules: Rules) -> Check:
    in_range = _range_checker(rules, Decimal)
    scale = _scale(rules)
    integer_digits = None if rules.precision is None else rules.precision - (scale or 0)
    most_places = NUMERIC_SCALE if scale is None else scale
    most_digits = NUMERIC_INTEGER_DIGITS if integer_digits is None else integer_digits

    def check(value: Any) -> Any:
        kind = type(value)
        if kind is Decimal:  # the exact reading of a JSON number (pipeline.decode)
            number = value
        elif kind is float:
            # repr() is the shortest text that round-trips: the digits the producer wrote, when a
            # double can hold them (fields that need more are read as Decimal: `exact`).
            number = Decimal(repr(value))
        elif kind is int:
            number = Decimal(value)
        else:
            raise FieldError("must be a number")
        if not number.is_finite():
            raise FieldError("must be a finite number")
        if _places(number) > most_places:
            raise FieldError(f"has more than {most_places} decimal places")
        if number and number.adjusted() + 1 > most_digits:
            raise FieldError(f"has more than {most_digits} digits before the decimal point")
        in_range(number)
        exponent = number.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -most_places:
            # Only trailing zeros go beyond the scale (1.50000 for 4 places): PostgreSQL refuses
            # more than its scale limit of them, so they are dropped; the value is unchanged.
            sign, digits, _ = number.as_tuple()
            cut = -exponent - most_places
            number = Decimal((sign, digits[: len(digits) - cut] or (0,), -most_places))
        return format(number, "f")

    return check


def _decimal_exact(rules: Rules) -> bool:
    return rules.precision is None or rules.precision > DOUBLE_DIGITS


def _float_bounds(rules: Rules) -> tuple[float, float]:
    """Open float bounds safely inside the exact bounds: values near a bound go to the slow path."""
    low, high = -math.inf, math.inf
    for bound in (rules.min, rules.min_exclusive):
        if bound is not None:
            low = max(low, float(bound) + 1e-9 * max(1.0, abs(float(bound))))
    for bound in (rules.max, rules.max_exclusive):
        if bound is not None:
            high = min(high, float(bound) - 1e-9 * max(1.0, abs(float(bound))))
    return low, high


def _decimal_conversion(rules: Rules) -> Conversion:
    # Only plain floats (digits, one dot, no exponent) and integers well inside the bounds take the fast path.
    scale, (low, high) = _scale(rules), _float_bounds(rules)
    digits = rules.precision - (rules.scale or 0) if rules.precision is not None else 1000
    # Bounds inside ±10**digits make counting the digits before the point needless.
    bounded = math.isfinite(low) and math.isfinite(high) and max(-low, high) < 10**digits
    constants = {"low": low, "high": high, "places": (1000 if scale is None else scale) + 1, "digits": digits}
    return Conversion(
        "result = missing\n"  # a float, or an int of at most 18 digits (check writes the same digits)
        "kind = type(value)\n"
        "if (kind is float or (kind is int and -(10**18) < value < 10**18))"
        f" and low < value < high{_NONZERO[rules.nonzero]}:\n"
        "    text = repr(value)\n"  # finite float: an exponent ("1e+16") or a point ("1.0"); int: its digits
        "    point = text.find('.') if kind is float else len(text)\n"  # the point and the digits after it
        f"    if 'e' not in text and len(text) - point <= places{_COUNTED[bounded]}:\n"
        "        result = text",
        constants,
        frozenset({"kind", "text", "point"}),
    )


_NONZERO = {True: " and value", False: ""}
_COUNTED = {True: "", False: " and len(text[:point].lstrip('-').lstrip('0')) <= digits"}


def _decimal_sql(rules: Rules) -> str:
    return "numeric" if rules.precision is None else f"numeric({rules.precision},{rules.scale or 0})"


# -- float, boolean, uuid, timestamp, enum ------------------------------------------------------------


def _float(rules: Rules) -> Check:
    in_range = _range_checker(rules, float)

    def check(value: Any) -> Any:
        kind = type(value)
        if kind is Decimal:  # the exact reading of a JSON number (pipeline.decode)
            if not value.is_finite():  # float() of a signalling NaN raises
                raise FieldError("must be a finite number")
        elif kind is not float and kind is not int:
            raise FieldError("must be a number")
        try:
            number = float(value)
        except OverflowError:  # an int beyond 1.8e308 (JSON cannot hold one; a hook can)
            raise FieldError("is too large for a double precision number") from None
        if not math.isfinite(number):
            raise FieldError("must be a finite number")
        in_range(number)
        return number

    return check


def _boolean(rules: Rules) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not bool:
            raise FieldError("must be true or false")
        return value

    return check


def _uuid(rules: Rules) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not str or len(value) > 45:
            raise FieldError("must be a UUID string")
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise FieldError("must be a UUID string") from None

    return check


def uuid_condition(rules: Rules) -> Condition:
    test = "type(value) is str and len(value) == 36 and value.isascii() and value.encode().translate(table) == shape"
    return Condition(test, {"table": _UUID_TABLE, "shape": b"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"})


def _timestamp(rules: Rules) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not str or len(value) > 64:
            raise FieldError("must be an RFC 3339 timestamp string")
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise FieldError("must be an RFC 3339 timestamp string") from None
        if moment.tzinfo is None:
            raise FieldError("timestamp needs a UTC offset (e.g. Z or +02:00)")
        return moment

    return check


def _timestamp_conversion(rules: Rules) -> Conversion:
    return Conversion(
        "result = missing\n"
        "if type(value) is str and 10 <= len(value) <= 40:\n"
        "    try:\n"
        "        moment = parse(value)\n"
        "    except ValueError:\n"
        "        moment = None\n"
        "    if moment is not None and moment.tzinfo is not None:\n"
        "        result = moment",
        {"parse": datetime.fromisoformat},
        frozenset({"moment"}),
    )


def _enum(rules: Rules) -> Check:
    allowed = frozenset(rules.values or ())

    def check(value: Any) -> Any:
        if type(value) is not str or value not in allowed:
            raise FieldError(f"must be one of {sorted(allowed)}")
        return value

    return check


def _fixed(sql_type: str) -> Callable[[Rules], str]:
    return lambda rules: sql_type


register(FieldType("string", _fixed("text"), _string, rules=LENGTHS, condition=string_condition))
register(FieldType("integer", _integer_sql, _integer, rules=BOUNDS, condition=integer_condition))
register(FieldType("decimal", _decimal_sql, _decimal, rules=BOUNDS | {"precision", "scale"}, exact=_decimal_exact,
                   conversion=_decimal_conversion))  # fmt: skip
register(FieldType("float", _fixed("double precision"), _float, None, BOUNDS))
register(FieldType("boolean", _fixed("boolean"), _boolean))
register(FieldType("uuid", _fixed("uuid"), _uuid, condition=uuid_condition))
register(FieldType("timestamp", _fixed("timestamp with time zone"), _timestamp, conversion=_timestamp_conversion))
register(FieldType("enum", _fixed("text"), _enum, None, frozenset({"values"})))
