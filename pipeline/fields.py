"""Field extractors compiled once from a `FieldSpec`: decoded JSON event in, database-ready value out.

This is the per-message hot path, so each extractor is one closure that reads its value and tries
the type's fast path (the common, valid case), falling back to the slow path that handles missing
values, defaults and the exact reason of a failure. What each type accepts is defined once, in
`pipeline.field_types`. Values go to PostgreSQL through COPY, so UUIDs and decimals travel as the
validated text the producer sent (PostgreSQL parses them once) instead of Python objects.

Extractors raise `FieldError` with a reason that never quotes the value (it ends up in the
dead-letter headers and in logs), and `FieldFailure` for anything else a check raised (a bug, or a
value a transform hook made up): the decoder rejects the event either way. Pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.field_types import FIELD_TYPES, MISSING, FieldError
from pipeline.spec import FieldSpec

Extract = Callable[[dict[str, Any]], Any]

__all__ = ["MISSING", "Extract", "FieldError", "FieldFailure", "compile_field", "compile_getter"]


class FieldFailure(Exception):
    """Reading `field` raised `error`, which is not a FieldError; `value` is what was read (to keep
    it out of the message: the error's own text may quote it)."""

    def __init__(self, field: str, error: Exception, value: Any) -> None:
        super().__init__(field, error)
        self.field, self.error, self.value = field, error, value


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


def default_value(spec: FieldSpec) -> Any:
    """What an optional field writes when its value is missing or null: its default, checked once
    (None without one). Both row readers take it from here."""
    return None if spec.default is None else FIELD_TYPES[spec.type].check(spec)(spec.default)


def compile_field(name: str, spec: FieldSpec) -> Extract:
    """The extractor of one field: `extract(event)` returns the value to write or raises FieldError."""
    kind = FIELD_TYPES[spec.type]
    check = kind.check(spec)
    fallback = default_value(spec)
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
    # Four variants, so that the common one (a top-level key with a fast check) costs one call. A
    # `try` costs nothing until something is raised.
    path = spec.path or name
    if "." not in path:
        key = path
        if fast is None:

            def extract_key_slow(event: dict[str, Any]) -> Any:
                value = event.get(key, MISSING)
                try:
                    return slow(value)
                except FieldError:
                    raise
                except Exception as exc:
                    raise FieldFailure(name, exc, value) from exc

            return extract_key_slow

        def extract_key(event: dict[str, Any]) -> Any:
            value = event.get(key, MISSING)
            try:
                accepted = fast(value)
                return accepted if accepted is not MISSING else slow(value)
            except FieldError:
                raise
            except Exception as exc:
                raise FieldFailure(name, exc, value) from exc

        return extract_key

    get = compile_getter(path)

    def extract_path(event: dict[str, Any]) -> Any:
        value = get(event)
        try:
            accepted = MISSING if fast is None else fast(value)
            return accepted if accepted is not MISSING else slow(value)
        except FieldError:
            raise
        except Exception as exc:
            raise FieldFailure(name, exc, value) from exc

    return extract_path
