"""Field extractors compiled once from a `FieldSpec`: decoded JSON event in, database-ready value out.

This is the per-message hot path, so each extractor is one closure that reads its value and checks
it on a fast path written for the common case (right type, in range), falling back to a slow path
that handles missing values, defaults and the exact reason of a failure. Values go to PostgreSQL
through text COPY, so UUIDs and decimals travel as the validated text the producer sent (PostgreSQL
parses them once) instead of being turned into Python objects and back.

Extractors raise `FieldError` with a reason that never quotes the value (it ends up in the
dead-letter headers and in logs). Pure functions; no I/O.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.spec import INT64_MAX, INT64_MIN, FieldSpec

Extract = Callable[[dict[str, Any]], Any]
Check = Callable[[Any], Any]

MISSING = object()
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class FieldError(ValueError):
    """A value does not satisfy its field's rules; str() is safe to log (no value in it)."""


def compile_getter(path: str) -> Callable[[dict[str, Any]], Any]:
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


def compile_field(name: str, spec: FieldSpec) -> Extract:
    """The extractor of one field: `extract(event)` returns the value to write or raises FieldError."""
    check = _CHECKS[spec.type](spec)
    fast = _FAST[spec.type](spec)
    get = compile_getter(spec.path or name)
    fallback = None if spec.default is None else check(spec.default)
    required = spec.required

    def slow(value: Any) -> Any:
        if value is MISSING or value is None:
            if required:
                raise FieldError(f"{name}: required field is missing or null")
            return fallback
        try:
            return check(value)
        except FieldError as exc:
            raise FieldError(f"{name}: {exc}") from None

    if spec.path is None or "." not in spec.path:
        key = spec.path or name
        inlined = _INLINED.get(spec.type)
        if inlined is not None:
            return inlined(key, spec, slow)

        def extract_simple(event: dict[str, Any]) -> Any:
            value = event.get(key, MISSING)
            accepted = fast(value)
            return accepted if accepted is not MISSING else slow(value)

        return extract_simple

    def extract_nested(event: dict[str, Any]) -> Any:
        value = get(event)
        accepted = fast(value)
        return accepted if accepted is not MISSING else slow(value)

    return extract_nested


# -- extractors with the fast path written inline (one call per field on the hot path) -------------


def _inline_string(key: str, spec: FieldSpec, slow: Check) -> Extract:
    low = spec.min_length or 0
    high = spec.max_length if spec.max_length is not None else math.inf

    def extract(event: dict[str, Any]) -> Any:
        value = event.get(key, MISSING)
        if type(value) is str and low <= len(value) <= high and "\x00" not in value:
            return value
        return slow(value)

    return extract


def _inline_integer(key: str, spec: FieldSpec, slow: Check) -> Extract:
    low, high = _int_bounds(spec)
    nonzero = spec.nonzero

    def extract(event: dict[str, Any]) -> Any:
        value = event.get(key, MISSING)
        if type(value) is int and low <= value <= high and (value or not nonzero):
            return value
        return slow(value)

    return extract


def _inline_uuid(key: str, spec: FieldSpec, slow: Check) -> Extract:
    match = _CANONICAL_UUID.fullmatch

    def extract(event: dict[str, Any]) -> Any:
        value = event.get(key, MISSING)
        if type(value) is str and len(value) == 36 and match(value):
            return value
        return slow(value)

    return extract


_INLINED: dict[str, Callable[[str, FieldSpec, Check], Extract]] = {
    "string": _inline_string,
    "integer": _inline_integer,
    "uuid": _inline_uuid,
}


# -- fast paths: the common, valid case in a few comparisons; MISSING means "ask the slow path" ----


def _fast_string(spec: FieldSpec) -> Check:
    low = spec.min_length or 0
    high = spec.max_length if spec.max_length is not None else math.inf

    def fast(value: Any) -> Any:
        if type(value) is str and low <= len(value) <= high and "\x00" not in value:
            return value
        return MISSING

    return fast


def _fast_integer(spec: FieldSpec) -> Check:
    low, high = _int_bounds(spec)
    nonzero = spec.nonzero

    def fast(value: Any) -> Any:
        if type(value) is int and low <= value <= high and (value or not nonzero):
            return value
        return MISSING

    return fast


def _int_bounds(spec: FieldSpec) -> tuple[int, int]:
    low, high = INT64_MIN, INT64_MAX
    if spec.min is not None:
        low = max(low, math.ceil(spec.min))
    if spec.min_exclusive is not None:
        low = max(low, math.floor(spec.min_exclusive) + 1)
    if spec.max is not None:
        high = min(high, math.floor(spec.max))
    if spec.max_exclusive is not None:
        high = min(high, math.ceil(spec.max_exclusive) - 1)
    return low, high


def _fast_decimal(spec: FieldSpec) -> Check:
    # Only plain floats (digits, one dot, no exponent) well inside the bounds take the fast path;
    # the slow path decides everything else exactly, with Decimal.
    scale = spec.scale if spec.scale is not None else 1000
    integer_digits = spec.precision - (spec.scale or 0) if spec.precision is not None else 1000
    low, high = _float_bounds(spec)
    nonzero = spec.nonzero

    def fast(value: Any) -> Any:
        if type(value) is not float or not low < value < high or (nonzero and not value):
            return MISSING
        text = repr(value)
        whole, _, fraction = text.partition(".")
        if "e" in fraction or "e" in whole or len(fraction) > scale:
            return MISSING
        if len(whole.lstrip("-").lstrip("0")) > integer_digits:
            return MISSING
        return text

    return fast


def _float_bounds(spec: FieldSpec) -> tuple[float, float]:
    """Open float bounds safely inside the spec's (exact) bounds: values near a bound go slow."""
    low, high = -math.inf, math.inf
    for bound in (spec.min, spec.min_exclusive):
        if bound is not None:
            low = max(low, float(bound) + 1e-9 * max(1.0, abs(float(bound))))
    for bound in (spec.max, spec.max_exclusive):
        if bound is not None:
            high = min(high, float(bound) - 1e-9 * max(1.0, abs(float(bound))))
    return low, high


def _fast_uuid(spec: FieldSpec) -> Check:
    match = _CANONICAL_UUID.fullmatch

    def fast(value: Any) -> Any:
        if type(value) is str and len(value) == 36 and match(value):
            return value
        return MISSING

    return fast


def _fast_timestamp(spec: FieldSpec) -> Check:
    parse = datetime.fromisoformat

    def fast(value: Any) -> Any:
        if type(value) is str and 10 <= len(value) <= 40:
            try:
                moment = parse(value)
            except ValueError:
                return MISSING
            if moment.tzinfo is not None:
                return moment
        return MISSING

    return fast


def _no_fast_path(spec: FieldSpec) -> Check:
    return lambda value: MISSING


# -- slow paths: exact checks with reasons ---------------------------------------------------------


def _string(spec: FieldSpec) -> Check:
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
    """Bounds from the spec, cast once to the value's type."""
    bounds: list[tuple[Any, Callable[[Any, Any], bool], str]] = []
    if spec.min is not None:
        bounds.append((cast(spec.min), lambda v, b: v < b, f"less than {spec.min}"))
    if spec.max is not None:
        bounds.append((cast(spec.max), lambda v, b: v > b, f"greater than {spec.max}"))
    if spec.min_exclusive is not None:
        bounds.append((cast(spec.min_exclusive), lambda v, b: v <= b, f"not greater than {spec.min_exclusive}"))
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


def _integer(spec: FieldSpec) -> Check:
    in_range = _range_checker(spec, int)

    def check(value: Any) -> Any:
        if type(value) is not int:
            raise FieldError("must be an integer")
        if not INT64_MIN <= value <= INT64_MAX:
            raise FieldError("outside the 64-bit integer range")
        in_range(value)
        return value

    return check


def _decimal(spec: FieldSpec) -> Check:
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
        return format(number, "f")

    return check


def _float(spec: FieldSpec) -> Check:
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


def _boolean(spec: FieldSpec) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not bool:
            raise FieldError("must be true or false")
        return value

    return check


def _uuid(spec: FieldSpec) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not str or len(value) > 45:
            raise FieldError("must be a UUID string")
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise FieldError("must be a UUID string") from None

    return check


def _timestamp(spec: FieldSpec) -> Check:
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


def _enum(spec: FieldSpec) -> Check:
    allowed = frozenset(spec.values or ())

    def check(value: Any) -> Any:
        if type(value) is not str or value not in allowed:
            raise FieldError(f"must be one of {sorted(allowed)}")
        return value

    return check


_CHECKS: dict[str, Callable[[FieldSpec], Check]] = {
    "string": _string,
    "integer": _integer,
    "decimal": _decimal,
    "float": _float,
    "boolean": _boolean,
    "uuid": _uuid,
    "timestamp": _timestamp,
    "enum": _enum,
}
_FAST: dict[str, Callable[[FieldSpec], Check]] = {
    "string": _fast_string,
    "integer": _fast_integer,
    "decimal": _fast_decimal,
    "uuid": _fast_uuid,
    "timestamp": _fast_timestamp,
    "float": _no_fast_path,
    "boolean": _no_fast_path,
    "enum": _no_fast_path,
}
