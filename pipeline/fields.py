"""Field validators compiled once from a `FieldSpec`: JSON value in, database-ready value out.

Each validator raises `FieldError` with a reason that never quotes the value (it ends up in the
dead-letter headers and in logs). Pure functions; no I/O.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.spec import INT64_MAX, INT64_MIN, FieldSpec

Converter = Callable[[Any], Any]
Getter = Callable[[dict[str, Any]], Any]

MISSING = object()


class FieldError(ValueError):
    """A value does not satisfy its field's rules; str() is safe to log (no value in it)."""


def compile_getter(path: str) -> Getter:
    """Read a dotted path (`a.b.c`) from a decoded JSON object; MISSING when absent."""
    parts = path.split(".")
    if len(parts) == 1:
        key = parts[0]
        return lambda event: event.get(key, MISSING)

    def nested(event: dict[str, Any]) -> Any:
        node: Any = event
        for part in parts:
            if type(node) is not dict:
                return MISSING
            node = node.get(part, MISSING)
            if node is MISSING:
                return MISSING
        return node

    return nested


def compile_converter(name: str, spec: FieldSpec) -> Converter:
    """Build the validator for one field; the result maps a JSON value (or MISSING) to a DB value."""
    check = _TYPE_CHECKS[spec.type](spec)
    required, default = spec.required, spec.default
    fallback = None if default is None else check(default)

    def convert(value: Any) -> Any:
        if value is MISSING or value is None:
            if required:
                raise FieldError(f"{name}: required field is missing or null")
            return fallback
        try:
            return check(value)
        except FieldError as exc:
            raise FieldError(f"{name}: {exc}") from None

    return convert


def _string(spec: FieldSpec) -> Converter:
    low, high = spec.min_length, spec.max_length

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


def _range_checker(spec: FieldSpec, cast: Callable[[Decimal], Any]) -> Callable[[Any], None]:
    """Bounds from the spec, cast once to the value's type so the hot path compares natively."""
    bounds: list[tuple[Any, Callable[[Any, Any], bool], str]] = []
    if spec.min is not None:
        bounds.append((cast(spec.min), lambda v, b: v < b, f"less than {spec.min}"))
    if spec.max is not None:
        bounds.append((cast(spec.max), lambda v, b: v > b, f"greater than {spec.max}"))
    if spec.min_exclusive is not None:
        bounds.append(
            (
                cast(spec.min_exclusive),
                lambda v, b: v <= b,
                f"not greater than {spec.min_exclusive}",
            )
        )
    if spec.max_exclusive is not None:
        bounds.append((cast(spec.max_exclusive), lambda v, b: v >= b, f"not less than {spec.max_exclusive}"))
    nonzero = spec.nonzero

    def check(value: Any) -> None:
        if nonzero and value == 0:
            raise FieldError("must not be zero")
        for bound, outside, reason in bounds:
            if outside(value, bound):
                raise FieldError(reason)

    return check


def _integer(spec: FieldSpec) -> Converter:
    in_range = _range_checker(spec, int)

    def check(value: Any) -> Any:
        if type(value) is not int:
            raise FieldError("must be an integer")
        if not INT64_MIN <= value <= INT64_MAX:
            raise FieldError("outside the 64-bit integer range")
        in_range(value)
        return value

    return check


def _decimal(spec: FieldSpec) -> Converter:
    in_range = _range_checker(spec, Decimal)
    scale = spec.scale
    integer_digits = None if spec.precision is None else spec.precision - (spec.scale or 0)

    def check(value: Any) -> Any:
        kind = type(value)
        if kind is float:
            # repr() is the shortest text that round-trips: the digits the producer wrote.
            number = Decimal(repr(value))
        elif kind is int:
            number = Decimal(value)
        else:
            raise FieldError("must be a number")
        if not number.is_finite():
            raise FieldError("must be a finite number")
        exponent = number.as_tuple().exponent
        if scale is not None and isinstance(exponent, int) and exponent < -scale:
            raise FieldError(f"has more than {scale} decimal places")
        if integer_digits is not None and number and number.adjusted() + 1 > integer_digits:
            raise FieldError(f"has more than {integer_digits} digits before the decimal point")
        in_range(number)
        return number

    return check


def _float(spec: FieldSpec) -> Converter:
    in_range = _range_checker(spec, float)

    def check(value: Any) -> Any:
        kind = type(value)
        if kind is not float and kind is not int:
            raise FieldError("must be a number")
        number = float(value)
        if not math.isfinite(number):
            raise FieldError("must be a finite number")
        in_range(number)
        return number

    return check


def _boolean(spec: FieldSpec) -> Converter:
    def check(value: Any) -> Any:
        if type(value) is not bool:
            raise FieldError("must be true or false")
        return value

    return check


def _uuid(spec: FieldSpec) -> Converter:
    def check(value: Any) -> Any:
        if type(value) is not str or len(value) > 45:
            raise FieldError("must be a UUID string")
        try:
            return uuid.UUID(value)
        except ValueError:
            raise FieldError("must be a UUID string") from None

    return check


def _timestamp(spec: FieldSpec) -> Converter:
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


def _enum(spec: FieldSpec) -> Converter:
    allowed = frozenset(spec.values or ())

    def check(value: Any) -> Any:
        if type(value) is not str or value not in allowed:
            raise FieldError(f"must be one of {sorted(allowed)}")
        return value

    return check


_TYPE_CHECKS: dict[str, Callable[[FieldSpec], Converter]] = {
    "string": _string,
    "integer": _integer,
    "decimal": _decimal,
    "float": _float,
    "boolean": _boolean,
    "uuid": _uuid,
    "timestamp": _timestamp,
    "enum": _enum,
}
