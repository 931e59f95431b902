"""An event's bytes parsed straight into its fields by msgspec: the decoder's fast path.

The reference path (pipeline.decode) parses a whole document with orjson into a dict, then reads the
fields out of it (pipeline.row_compiler). Here msgspec parses the document into a struct of the
pipeline's top-level fields instead, in C, without building a dict, and the same checks as the
reference path run on the values it read.

Contract: `StructReader.read(value, seq, record)` returns exactly the row that the reference path
returns for the same bytes (`compile_row(fields, items)(orjson.loads(value), seq, record)`), or None
when it cannot tell; the decoder then takes the reference path, which decides. It never raises.

Why the rows are the same:
- msgspec accepts only documents that orjson accepts, and reads the same values from them (same
  strings, same integers, the same doubles). Every value in the document is parsed: the struct
  forbids keys it does not know, so a key the pipeline does not read is a struct attribute too,
  typed as a scalar (string, 64-bit integer, double, boolean or null) and parsed like the others. A
  number beyond a double (`1e400`) is refused by both parsers; a nested value in such a key, an
  integer beyond 64 bits and anything else msgspec is not typed for sends the document to the
  reference path. Keys the pipeline does not read are learned from the documents the reference path
  parsed (`learn`), up to `MAX_UNREAD_KEYS`;
- each field's value then goes through its type's own fast check (or `check`, for a type without
  one), the same function the reference path's row reader calls first; whatever that does not
  accept as it is goes to the reference path, which gives the exact reason.

tests/unit/test_struct_reader.py holds this against the reference path on generated documents.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import msgspec

from pipeline.field_types import FIELD_TYPES, INT64_MAX, INT64_MIN, MISSING
from pipeline.spec import FieldSpec

# Keys the pipeline does not read that the struct learns, per pipeline: enough for the keys producers
# add to their events; documents with others take the reference path.
MAX_UNREAD_KEYS = 64
# Longer keys are not learned: what the struct remembers stays small whatever the documents hold.
MAX_UNREAD_KEY_LENGTH = 256
# msgspec's bounds stop at 64 bits; orjson reads up to 2**64 - 1 as an integer, and beyond as a double.
_INTEGER = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
_NUMBER = _INTEGER | float
_PRESENT = str | _INTEGER | float | bool
_SCALAR = _PRESENT | None
# The JSON values a type's checks can accept, as msgspec types. Only a speed matter: a value of
# another kind sends its document to the reference path.
_PARSED_AS: Mapping[str, Any] = {
    "string": str,
    "uuid": str,
    "timestamp": str,
    "enum": str,
    "integer": _INTEGER,
    "decimal": _NUMBER,
    "float": _NUMBER,
    "boolean": bool,
}

StructRow = Callable[[Any, int, Sequence[Any]], "tuple[Any, ...] | None"]


def struct_readable(fields: Mapping[str, FieldSpec]) -> bool:
    """True when every field is read from its own top-level key (the struct has one attribute per key)."""
    paths = [spec.path or name for name, spec in fields.items()]
    return all("." not in path for path in paths) and len(set(paths)) == len(paths)


def struct_reader(fields: Mapping[str, FieldSpec], record_items: Sequence[int] = ()) -> StructReader | None:
    """The struct reader of `fields`, or None when they cannot be read as one struct: a nested path,
    two fields at one key, or a key msgspec will not take as a field name (a control character)."""
    if not struct_readable(fields):
        return None
    try:
        return StructReader(fields, record_items)
    except (ValueError, TypeError):  # msgspec refused the struct
        return None


class StructReader:
    """The fast path of one pipeline's decoder (see the module docstring). Not thread-safe: one decoder,
    one thread."""

    def __init__(self, fields: Mapping[str, FieldSpec], record_items: Sequence[int] = ()) -> None:
        if not struct_readable(fields):
            raise ValueError("a struct reader needs each field at its own top-level key")
        self._read_keys = frozenset(spec.path or name for name, spec in fields.items())
        self._fields = [
            (f"f{i}", spec.path or name, _parsed_as(spec), spec.required)
            for i, (name, spec) in enumerate(fields.items())
        ]
        self._unread: dict[str, None] = {}  # learned keys, in the order they were met
        self._refused: set[str] = set()
        self._known = self._read_keys
        self._decode = self._decoder()
        self._row = _compile_row(fields, record_items)

    def read(self, value: bytes, seq: int, record: Sequence[Any]) -> tuple[Any, ...] | None:
        """The row of `value` (see the module docstring), or None: ask the reference path."""
        try:
            return self._row(self._decode(value), seq, record)
        except Exception:  # msgspec refused the document, or a check raised: the reference path decides
            return None

    def learn(self, event: dict[str, Any]) -> None:
        """Take note of the top-level keys of `event` (a document the reference path parsed) that the
        pipeline does not read and that hold a scalar, so that the next documents with them are read
        here too. Cheap when there is nothing new; never raises.

        Not learned: keys of a list or an object (they may be learned from a later document), and keys
        longer than MAX_UNREAD_KEY_LENGTH or that msgspec cannot name (a control character): those are
        remembered as refused, up to MAX_UNREAD_KEYS of them, so that they are not tried again.
        """
        if event.keys() <= self._known or len(self._unread) >= MAX_UNREAD_KEYS:
            return
        new = [key for key, value in event.items() if key not in self._known and not isinstance(value, list | dict)]
        for key in new:
            if len(self._unread) >= MAX_UNREAD_KEYS:
                break
            if len(key) > MAX_UNREAD_KEY_LENGTH or not key.isprintable():
                self._refuse(key)
                continue
            self._unread[key] = None
            try:
                self._decode = self._decoder()
            except Exception:  # a key msgspec will not take as a field name
                del self._unread[key]
                self._refuse(key)
        self._known = self._read_keys | self._unread.keys() | self._refused

    def _refuse(self, key: str) -> None:
        if len(self._refused) < MAX_UNREAD_KEYS:
            self._refused.add(key)

    @property
    def unread_keys(self) -> tuple[str, ...]:
        return tuple(self._unread)

    def _decoder(self) -> Callable[[bytes], Any]:
        # A required field has no default: msgspec refuses a document without it.
        attributes: list[tuple[str, Any] | tuple[str, Any, Any]] = [
            (attr, kind) if required else (attr, kind | msgspec.UnsetType, msgspec.UNSET)
            for attr, _, kind, required in self._fields
        ]
        attributes += [(f"u{i}", _SCALAR | msgspec.UnsetType, msgspec.UNSET) for i in range(len(self._unread))]
        rename = {attr: key for attr, key, _, _ in self._fields} | {f"u{i}": key for i, key in enumerate(self._unread)}
        event = msgspec.defstruct(
            "Event", attributes, kw_only=True, forbid_unknown_fields=True, rename=rename, gc=False
        )
        decode: Callable[[bytes], Any] = msgspec.json.Decoder(event).decode
        return decode


def _parsed_as(spec: FieldSpec) -> Any:
    """The msgspec type of a field's attribute: what its checks may accept, plus null when the field
    may be left out (null then means missing, as on the reference path)."""
    kind = _PARSED_AS.get(spec.type, _PRESENT)
    return kind if spec.required else kind | None


def _compile_row(fields: Mapping[str, FieldSpec], record_items: Sequence[int]) -> StructRow:
    """The function reading a parsed struct into `(seq, value, ..., record[i], ...)` or None.

    Each field as the reference row reader takes it: its type's condition (inlined) or fast check,
    else its `check` for a type with neither; a value missing (UNSET) or null becomes the field's
    default when it is not required. Whatever else returns None. The source is our own: field names
    and rule values reach it as values in its namespace, never as text.
    """
    namespace: dict[str, Any] = {"MISSING": MISSING, "UNSET": msgspec.UNSET}
    body, values = [], []
    for i, spec in enumerate(fields.values()):
        kind = FIELD_TYPES[spec.type]
        body.append(f"    v{i} = event.f{i}")
        if not spec.required:
            # As pipeline.fields.compile_field: the default, checked once.
            namespace[f"default{i}"] = None if spec.default is None else kind.check(spec)(spec.default)
            body += [f"    if v{i} is UNSET or v{i} is None:", f"        v{i} = default{i}", "    else:"]
        indent = "    " if spec.required else "        "
        if kind.condition is not None:
            test, constants = kind.condition(spec).inlined(f"v{i}", f"c{i}_")
            namespace.update(constants)
            body += [f"{indent}if not ({test}):", f"{indent}    return None"]
        elif kind.fast is not None:
            namespace[f"fast{i}"] = kind.fast(spec)
            body += [f"{indent}v{i} = fast{i}(v{i})", f"{indent}if v{i} is MISSING:", f"{indent}    return None"]
        else:
            namespace[f"check{i}"] = kind.check(spec)  # raises for a value it refuses: read() returns None
            body.append(f"{indent}v{i} = check{i}(v{i})")
        values.append(f"v{i}, ")
    values += [f"record[{int(item)}], " for item in record_items]
    source = "\n".join(["def row(event, seq, record=()):", *body, f"    return (seq, {''.join(values)})"])
    exec(compile(source, f"<struct row reader of {len(fields)} fields>", "exec"), namespace)  # noqa: S102 - our own source
    row: StructRow = namespace["row"]
    return row
