"""Field extractors compiled once from a `FieldSpec`: decoded JSON event in, database-ready value out.

This is the per-message hot path, so each extractor is one closure that reads its value and tries
the type's fast path (the common, valid case), falling back to the slow path that handles missing
values, defaults and the exact reason of a failure. What each type accepts is defined once, in
`pipeline.field_types`. Values go to PostgreSQL through COPY, so UUIDs and decimals travel as the
validated text the producer sent (PostgreSQL parses them once) instead of Python objects.

Extractors raise `FieldError` with a reason that never quotes the value (it ends up in the
dead-letter headers and in logs). Pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.field_types import FIELD_TYPES, MISSING, FieldError
from pipeline.spec import FieldSpec

Extract = Callable[[dict[str, Any]], Any]

__all__ = ["MISSING", "Extract", "FieldError", "compile_field", "compile_getter"]


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
    kind = FIELD_TYPES[spec.type]
    check = kind.check(spec)
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

    fast = kind.fast(spec) if kind.fast is not None else None
    path = spec.path or name
    if "." not in path:
        key = path
        if fast is None:
            return lambda event: slow(event.get(key, MISSING))

        def extract_key(event: dict[str, Any]) -> Any:
            value = event.get(key, MISSING)
            accepted = fast(value)
            return accepted if accepted is not MISSING else slow(value)

        return extract_key

    get = compile_getter(path)
    if fast is None:
        return lambda event: slow(get(event))

    def extract_path(event: dict[str, Any]) -> Any:
        value = get(event)
        accepted = fast(value)
        return accepted if accepted is not MISSING else slow(value)

    return extract_path
