"""An event's bytes parsed straight into its fields by msgspec: the decoder's fast path.

The reference path (pipeline.decode) parses a whole document with orjson into a dict, then reads the
fields out of it (pipeline.row_compiler.compile_row). Here msgspec parses the document into a struct
of the pipeline's top-level keys instead, in C, without building a dict, and the reference path's own
checks run on the values it read (pipeline.row_compiler.compile_struct_row).

Contract: `StructReader.read(value, seq, record)` returns exactly the row that the reference path
returns for the same bytes (`compile_row(fields, items, keys)(orjson.loads(value), seq, record)`), or None
when it cannot tell; the decoder then takes the reference path, which decides. It never raises.

Why the rows are the same:
- Every value in the document is parsed, and by a parser that refuses what orjson refuses. The
  struct forbids keys it does not know, so a key the pipeline does not read is an attribute too,
  learned from the documents the reference path parsed (`learn`, up to MAX_UNREAD_KEYS), and typed as
  any JSON value up to NESTING_DEPTH lists or objects deep whose scalars are strings, 64-bit integers,
  doubles, booleans or null. msgspec parses a typed value wherever it is, every occurrence of a key
  written twice included (it keeps the last, as orjson does); a deeper value, an integer beyond 64
  bits or a key the struct does not know sends the document to the reference path.
- msgspec and orjson read the same strings, integers and doubles and refuse the same documents where
  it matters: numbers beyond a double (`1e400`), invalid UTF-8 and lone surrogates in a string, control
  characters, anything but JSON whitespace. That is msgspec's behaviour, not a promise of its API, so
  the reader is first checked on the documents in `_MUST_REFUSE` and `_MUST_READ`, and pipelines get
  no fast path when the installed msgspec does otherwise (`struct_reader` returns None).
- Each field's value then goes through the reference path's own checks, in the same order; whatever
  they do not accept as it is goes to the reference path, which gives the exact reason. For a string,
  integer or UUID field, msgspec checks the bounds of that condition as it parses (the field's struct
  form, pipeline.struct_forms), and the reader checks what is left of it.

tests/unit/test_struct_reader.py holds this against the reference path on generated documents.
Pure: no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import msgspec
import orjson

from pipeline.field_types import INT64_MAX, INT64_MIN
from pipeline.row_compiler import StagedKeys, StructRead, StructRow, compile_struct_read, compile_struct_row
from pipeline.spec import FieldSpec
from pipeline.struct_forms import StructForm, struct_form

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
# Any JSON value up to NESTING_DEPTH lists or objects deep, every scalar in it typed as above: msgspec
# parses (and refuses) all of it, as orjson does. A deeper value sends its document to the reference path.
NESTING_DEPTH = 6
_VALUE: Any = _SCALAR
for _ in range(NESTING_DEPTH):
    _VALUE = _SCALAR | list[_VALUE] | dict[str, _VALUE]
_UNREAD = _VALUE | msgspec.UnsetType
# The JSON values a built-in type's checks can accept, as msgspec types: a value of another kind sends
# its document to the reference path. Another type's field is parsed as any scalar.
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
# What msgspec may not take as a field name (its rule); such keys are never learned.
_UNNAMEABLE = frozenset('"\\') | frozenset(map(chr, range(32)))
# Where msgspec and orjson could part: each document holds the hostile value in a key the struct
# learned from {"k": "v", "n": []}, or is not even JSON.
_MUST_REFUSE = [
    b'{"k":1e400}', b'{"k":-1E309}', b'{"k":' + b"9" * 400 + b"}", b'{"k":"\xff"}', b'{"k":"\xed\xa0\x80"}',
    b'{"k":"\\ud800"}', b'{"k":"a\nb"}', b'{"k":NaN}', b'{"k":01}', b'{"k":"v"}\x00', b'\xef\xbb\xbf{"k":"v"}',
    b'\x0c{"k":"v"}', b'{"n":[1e400]}', b'{"n":["\xff"]}', b'{"n":' + b"[" * 1024 + b"]" * 1024 + b"}",
    b'{"n":[' + b"9" * 400 + b"]}", b'{"k":"v","k":1e400}', b'{"n":[1e400],"n":1}', b'{"n":["\xff"],"n":[]}',
    b'{"n":[1e400],"\\u006e":1}', b'{"n":{"a":[1e400],"a":1}}', b'{"n":{"\xff":1}}', b'{"n":{"a":"\\udc00"}}',
]  # fmt: skip
_MUST_READ = [
    b'{"k":-0.0}', b'{"k":1.7976931348623157e308}', b'{"k":5e-324}', b'{"k":"\\ud83d\\ude00"}', b'{"k":"\\u0000"}',
    b'{"k":1e-400}', b'{"k":-9223372036854775808}', b'{"k":0.1}', b'{"k":[1,{"a":null}]}', b'{"k":"\\"\\\\\\/"}',
]  # fmt: skip


def struct_readable(fields: Mapping[str, FieldSpec]) -> bool:
    """True when every field is read from its own top-level key (the struct has one attribute per key)."""
    paths = [spec.path or name for name, spec in fields.items()]
    return all("." not in path for path in paths) and len(set(paths)) == len(paths)


def struct_reader(
    fields: Mapping[str, FieldSpec], record_items: Sequence[int] = (), keys: StagedKeys = ()
) -> StructReader | None:
    """The struct reader of `fields`, or None when there is none: a nested path, two fields at one
    key, a key msgspec will not take as a field name, or an installed msgspec that does not parse as
    this module relies on (see the module docstring)."""
    if not struct_readable(fields) or not _msgspec_parses_as_relied_on():
        return None
    try:
        return StructReader(fields, record_items, keys)
    except Exception:  # msgspec refused the struct: decode without a fast path
        return None


@functools.cache  # once per process: the installed msgspec does not change
def _msgspec_parses_as_relied_on() -> bool:
    """The reader refuses every document of `_MUST_REFUSE`, and reads the value of each of
    `_MUST_READ` as orjson does; False too when anything in that raises."""
    try:
        probe = StructReader({})
        probe.learn({"k": "v", "n": []})
        if probe.unread_keys != ("k", "n") or any(probe.read(doc, 0, ()) is not None for doc in _MUST_REFUSE):
            return False
        return all(repr(probe.struct(doc).u0) == repr(orjson.loads(doc)["k"]) for doc in _MUST_READ)
    except Exception:  # a msgspec that refuses one of them, or that this module does not fit
        return False


class _Struct:
    """The msgspec struct of a pipeline's top-level keys, and the unread keys it learned."""

    def __init__(self, fields: Mapping[str, FieldSpec], forms: Mapping[str, StructForm]) -> None:
        self._read_keys = frozenset(spec.path or name for name, spec in fields.items())
        self._fields = [
            (f"f{i}", spec.path or name, _parsed_as(spec, forms.get(name)), spec.required)
            for i, (name, spec) in enumerate(fields.items())
        ]
        self._unread: dict[str, None] = {}  # the learned keys, in the order met
        self._refused: set[str] = set()
        self._known = self._read_keys
        self._learning = True
        self.decode = self._decoder()

    @property
    def unread_keys(self) -> tuple[str, ...]:
        return tuple(self._unread)

    def learn(self, event: dict[str, Any]) -> bool:
        """Learn the keys of `event` that the pipeline does not read; True when the struct changed.
        Never raises. Not learned, and remembered as refused (up to MAX_UNREAD_KEYS of them, so that
        they are not tried again): keys msgspec cannot name (a control character, a quote or a
        backslash), keys longer than MAX_UNREAD_KEY_LENGTH, and any beyond MAX_UNREAD_KEYS. One set
        comparison when every key is known."""
        if not self._learning or event.keys() <= self._known:
            return False
        if len(self._unread) >= MAX_UNREAD_KEYS and len(self._refused) >= MAX_UNREAD_KEYS:
            return False  # nothing more to learn or to remember
        new: dict[str, None] = {}
        refused: set[str] = set()
        for key in event:
            if key in self._known:
                continue
            if (
                len(self._unread) + len(new) < MAX_UNREAD_KEYS
                and len(key) <= MAX_UNREAD_KEY_LENGTH
                and _UNNAMEABLE.isdisjoint(key)
            ):
                new[key] = None
            elif len(self._refused) + len(refused) < MAX_UNREAD_KEYS:
                refused.add(key)
        if new:
            self._unread |= new
            try:
                self.decode = self._decoder()
            except Exception:  # msgspec refused a name after all: keep the struct as it was, learn no more
                for key in new:
                    del self._unread[key]
                self._learning = False
                return False
        if new or refused:
            self._refused |= refused
            self._known = self._read_keys | self._unread.keys() | self._refused
        return bool(new)

    def _decoder(self) -> Callable[[bytes], Any]:
        fields = tuple((attr, key, kind, repr(kind), required) for attr, key, kind, required in self._fields)
        return _event_decoder(fields, tuple(self._unread))


_Attribute = tuple[str, str, Any, str, bool]


# Building a decoder costs about 1.5 ms per learned key (msgspec evaluates each attribute's nested
# type), and a process builds the same ones again: the decoder of every pipeline reloaded, the unit
# tests' thousands of readers. Decoders are immutable once built and their methods thread-safe since
# msgspec 0.16 (msgspec#402), so readers of the same struct share one. Bounded: at most 16 of them, each
# under half a megabyte at MAX_UNREAD_KEYS keys.
@functools.lru_cache(maxsize=16)
def _event_decoder(fields: tuple[_Attribute, ...], unread: tuple[str, ...]) -> Callable[[bytes], Any]:
    """The decoder of the struct of `fields` (attribute, key, type, the type's repr so that two types
    equal as sets but written otherwise are not taken for one another, required) and `unread` keys."""
    # A required field has no default: msgspec refuses a document without it.
    attributes: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        (attr, kind) if required else (attr, kind | msgspec.UnsetType, msgspec.UNSET)
        for attr, _, kind, _, required in fields
    ]
    attributes += [(f"u{i}", _UNREAD, msgspec.UNSET) for i in range(len(unread))]
    rename = {attr: key for attr, key, _, _, _ in fields} | {f"u{i}": key for i, key in enumerate(unread)}
    event = msgspec.defstruct("Event", attributes, kw_only=True, forbid_unknown_fields=True, rename=rename, gc=False)
    decode: Callable[[bytes], Any] = msgspec.json.Decoder(event).decode
    return decode


def _parsed_as(spec: FieldSpec, form: StructForm | None) -> Any:
    """The msgspec type of a field's attribute: its struct form's, else what its checks may accept;
    plus null when the field may be left out."""
    kind = form.parsed if form is not None else _PARSED_AS.get(spec.type, _PRESENT)
    return kind if spec.required else kind | None


class StructReader:
    """The fast path of one pipeline's decoder (see the module docstring). Not thread-safe: one
    decoder, one thread."""

    def __init__(
        self, fields: Mapping[str, FieldSpec], record_items: Sequence[int] = (), keys: StagedKeys = ()
    ) -> None:
        if not struct_readable(fields):
            raise ValueError("a struct reader needs each field at its own top-level key")
        forms = {name: form for name, spec in fields.items() if (form := struct_form(spec)) is not None}
        self._struct = _Struct(fields, forms)
        # `read` is `row(parse(value), seq, record)`, with any exception meaning None. Both are plain
        # attributes so that the decoder's loop can make that call itself, without a frame for `read`;
        # `parse` changes when `learn` learns a key.
        self.parse: Callable[[bytes], Any] = self._struct.decode
        residuals = {name: form.residual for name, form in forms.items()}
        self.row: StructRow = compile_struct_row(fields, record_items, residuals, keys)
        # The same reader with the parse written in, for the decoder's batch loop (`numbered`).
        self.read_numbered: StructRead
        self.read_numbered, self._numbered = compile_struct_read(fields, record_items, residuals, keys)
        self._numbered["parse"] = self.parse

    def numbered(self, limit: int, counter: list[int]) -> StructRead:
        """`read_numbered`, reading values of at most `limit` bytes and numbering its rows from
        `counter` (a one-item list it moves on by one per row): see row_compiler.compile_struct_read."""
        self._numbered["limit"], self._numbered["counter"] = limit, counter
        return self.read_numbered

    @property
    def unread_keys(self) -> tuple[str, ...]:
        return self._struct.unread_keys

    def read(self, value: bytes, seq: int, record: Sequence[Any]) -> tuple[Any, ...] | None:
        """The row of `value` (see the module docstring), or None: ask the reference path."""
        try:
            return self.row(self.parse(value), seq, record)
        except Exception:  # msgspec refused the document, or a check raised: the reference path decides
            return None

    def learn(self, event: dict[str, Any]) -> None:
        """Take note of the top-level keys of `event`, a document the reference path parsed, that the
        pipeline does not read, so that the next documents with them are read here too."""
        if self._struct.learn(event):
            self.parse = self._numbered["parse"] = self._struct.decode

    def struct(self, value: bytes) -> Any:
        """The struct msgspec parses `value` into (for the start-up self-test); raises what it raises."""
        return self.parse(value)
