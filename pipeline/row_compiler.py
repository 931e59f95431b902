"""A pipeline's fields read by one function: the decoder's per-record hot path, compiled once.

Reading an event through one extractor per field costs two Python frames per field (the extractor,
then its type's fast check) and a comprehension's frame per event; for the seven fields of the
invoice pipeline that was about a quarter of decoding. `compile_row` writes the loop out instead:
one function whose body reads each top-level field and tests it with its type's condition written
in (pipeline.conditions: no frame at all), or calls its type's fast check directly (one frame),
then falls back to the field's own extractor (`compile_field`) for a value the fast path does not
take (missing, a default, the exact reason it is wrong).

Contract: `compile_row(fields, items, keys)(event, seq, record)` returns `(seq, *values, *[key(values[at])
for at, key in keys], *[record[i] for i in items])`, where `values = [extract(event) for extract in
compile_field(...)]`, and raises what that raises, for any event. Anything the compiled body raises
sends the event through that reference path again, so failures carry the extractor's message. `keys`
are the lookup keys staged after the fields (pipeline.staged_keys), each computed from the value of
the field at index `at`.

`compile_struct_row` is the same reader for the decoder's fast path (pipeline.struct_reader): its
values come from a struct msgspec parsed instead of a dict. It applies a field's default itself (a
missing or null value, the field not required), calls `check` itself for a type with neither
condition nor fast check, and returns None wherever the reference reader would need the extractor to
tell why a value is refused, so that the reference path decides.

The generated source contains identifiers of its own making (v0, fast0, c0_low, ...) and the field
types' own condition text: field names, paths and rule values reach it as values in its namespace,
never as text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from pipeline.conditions import Condition, compiled
from pipeline.field_types import FIELD_TYPES, MISSING
from pipeline.fields import Extract, compile_field, default_value
from pipeline.spec import FieldSpec
from pipeline.staged_keys import StagedKey

RowReader = Callable[[dict[str, Any], int, Sequence[Any]], tuple[Any, ...]]


StagedKeys = Sequence[tuple[int, StagedKey]]


def reference_row(extracts: tuple[Extract, ...], record_items: Sequence[int] = (), keys: StagedKeys = ()) -> RowReader:
    """The row read one extractor at a time: what a compiled reader must equal."""

    def row(event: dict[str, Any], seq: int, record: Sequence[Any] = ()) -> tuple[Any, ...]:
        values = [extract(event) for extract in extracts]
        return (seq, *values, *[key(values[at]) for at, key in keys], *[record[i] for i in record_items])

    return row


def _staged_keys(keys: StagedKeys, namespace: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The statements computing each staged key from its field's variable (the memo looked up in place,
    the key called for a value not in it), and the names of their results, in order."""
    lines, names = [], []
    for j, (at, key) in enumerate(keys):
        # Names of their own: `key<i>` is the i-th field's JSON key in compile_row's namespace.
        namespace[f"staged{j}"], namespace[f"memo{j}"] = key, key.memo
        lines.append(f"    s{j} = memo{j}.get(v{int(at)}) or staged{j}(v{int(at)})")
        names.append(f"s{j}, ")
    return lines, names


def compile_row(fields: Mapping[str, FieldSpec], record_items: Sequence[int] = (), keys: StagedKeys = ()) -> RowReader:
    """The function reading every field of an event into `(seq, value, ..., key, ..., record[i], ...)`,
    in `fields`' order, then `keys`' (the lookup keys staged after the fields), then `record_items`'
    (items of the record the event came from, copied as they are: the decoder's Kafka columns, so that
    a row is built as one tuple rather than joined from two)."""
    extracts = tuple(compile_field(name, spec) for name, spec in fields.items())
    reference = reference_row(extracts, record_items, keys)
    namespace: dict[str, Any] = {"MISSING": MISSING, "reference": reference}
    body, values = [], []
    for i, (name, spec) in enumerate(fields.items()):
        namespace[f"extract{i}"] = extracts[i]
        kind, path = FIELD_TYPES[spec.type], spec.path or name
        if kind.condition is not None and "." not in path:
            # The type's condition written into the body: no call at all for a valid value.
            test, constants = kind.condition(spec).inlined(f"v{i}", f"c{i}_")
            namespace.update(constants)
            namespace[f"key{i}"] = path
            body += [
                f"        v{i} = event.get(key{i}, MISSING)",
                f"        if not ({test}):",
                f"            v{i} = extract{i}(event)",
            ]
        elif kind.conversion is not None and "." not in path:
            # The type's conversion written into the body: statements setting w<i>, no call.
            lines, constants = kind.conversion(spec).inlined(f"v{i}", f"w{i}", f"c{i}_", MISSING)
            namespace.update(constants)
            namespace[f"key{i}"] = path
            body += [
                f"        v{i} = event.get(key{i}, MISSING)",
                *(f"        {line}" for line in lines),
                f"        v{i} = w{i} if w{i} is not MISSING else extract{i}(event)",
            ]
        elif kind.fast is not None and "." not in path:
            namespace[f"key{i}"], namespace[f"fast{i}"] = path, kind.fast(spec)
            body += [
                f"        v{i} = fast{i}(event.get(key{i}, MISSING))",
                f"        if v{i} is MISSING:",
                f"            v{i} = extract{i}(event)",
            ]
        else:
            body.append(f"        v{i} = extract{i}(event)")
        values.append(f"v{i}, ")
    key_lines, key_names = _staged_keys(keys, namespace)
    body += [f"    {line}" for line in key_lines]
    values += key_names + [f"record[{int(item)}], " for item in record_items]
    source = "\n".join(
        [
            "def row(event, seq, record=()):",
            "    try:",
            *body,
            "    except Exception:",  # the reference path raises the extractor's own error
            "        return reference(event, seq, record)",
            f"    return (seq, {''.join(values)})",
        ]
    )
    exec(compiled(source, f"<row reader of {len(extracts)} fields>"), namespace)  # noqa: S102 - our own source
    reader: RowReader = namespace["row"]
    return reader


StructRow = Callable[[Any, int, Sequence[Any]], "tuple[Any, ...] | None"]


def compile_struct_row(
    fields: Mapping[str, FieldSpec],
    record_items: Sequence[int] = (),
    residuals: Mapping[str, Condition] | None = None,
    keys: StagedKeys = (),
) -> StructRow:
    """The function reading a struct parsed by pipeline.struct_reader into the row `compile_row` gives
    for the same document, or None when the reference path must decide; it raises whatever a check
    raises (the caller then asks the reference path too). `residuals` (field name → condition): what
    is left of a field's condition once msgspec parsed its value as its struct form
    (pipeline.struct_forms), checked in place of the whole condition.

    `row(event, seq, record)`: `event.f<i>` holds the i-th field's value, UNSET when the key is
    absent (a required field is never absent: msgspec refused the document). Each field takes the checks of
    the reference reader, in its order: the condition or fast check; for a value it does not take, the
    field's default when the value is missing or null and the field not required, else None (the
    reference path's `check` decides). A type with neither condition nor fast check: the default, or
    its `check`.
    """
    namespace: dict[str, Any] = {"MISSING": MISSING, "UNSET": msgspec.UNSET}
    body, values = _struct_row_body(fields, record_items, residuals or {}, keys, namespace)
    source = "\n".join(["def row(event, seq, record):", *body, f"    return (seq, {''.join(values)})"])
    exec(compiled(source, f"<struct row reader of {len(fields)} fields>"), namespace)  # noqa: S102 - our own source
    row: StructRow = namespace["row"]
    return row


StructRead = Callable[[Any, Sequence[Any]], "tuple[Any, ...] | None"]
# The lines of a struct read function up to its parse (the size check, then msgspec): bench/profile.py
# counts samples there as parsing, not as field checks.
STRUCT_READ_PARSE_LINES = 5


def compile_struct_read(
    fields: Mapping[str, FieldSpec],
    record_items: Sequence[int] = (),
    residuals: Mapping[str, Condition] | None = None,
    keys: StagedKeys = (),
) -> tuple[StructRead, dict[str, Any]]:
    """`compile_struct_row` with the parse written in: `read(value, record)` is `row(parse(value), seq,
    record)` for a value neither empty nor longer than `limit` bytes, None for those and whenever that
    raises or gives None. `seq` is `counter[0]`, taken (and the counter moved on) by a row only, so that
    the decoder's loop can be one comprehension whose rows are numbered as they are made.

    Returns the function and its namespace, where the caller sets `parse` (again whenever the struct
    learns a key), `limit` and `counter` (a one-item list) before any call.
    """
    namespace: dict[str, Any] = {"MISSING": MISSING, "UNSET": msgspec.UNSET, "parse": None, "limit": 0, "counter": [0]}
    body, values = _struct_row_body(fields, record_items, residuals or {}, keys, namespace)
    source = "\n".join(
        [
            "def read(value, record):",
            "    try:",
            "        if not value or len(value) > limit:",
            "            return None",
            "        event = parse(value)",
            *(f"    {line}" for line in body),
            "    except Exception:",  # msgspec refused the document, or a check raised: the reference path decides
            "        return None",
            "    seq = counter[0]",
            "    counter[0] = seq + 1",
            f"    return (seq, {''.join(values)})",
        ]
    )
    exec(compiled(source, f"<struct read of {len(fields)} fields>"), namespace)  # noqa: S102 - our own source
    read: StructRead = namespace["read"]
    return read, namespace


def _struct_row_body(
    fields: Mapping[str, FieldSpec],
    record_items: Sequence[int],
    residuals: Mapping[str, Condition],
    keys: StagedKeys,
    namespace: dict[str, Any],
) -> tuple[list[str], list[str]]:
    """The statements of a struct row reader (`event.f<i>` into `v<i>`, `return None` where the reference
    path must decide) and the row's values after `seq`, with their constants put in `namespace`."""
    body: list[str] = []
    values: list[str] = []
    for i, (name, spec) in enumerate(fields.items()):
        kind = FIELD_TYPES[spec.type]
        residual = residuals.get(name)
        body.append(f"    v{i} = event.f{i}")
        if not spec.required:
            namespace[f"default{i}"] = default_value(spec)  # as compile_field's; a missing key reads MISSING
            body += [f"    if v{i} is UNSET:", f"        v{i} = MISSING"]

        def refused(target: str, i: int = i, required: bool = spec.required) -> list[str]:
            """What follows a value the check did not take: None, or the default of a missing value."""
            if required:
                return ["        return None"]
            return [
                f"        if v{i} is MISSING or v{i} is None:",
                f"            {target} = default{i}",
                "        else:",
                "            return None",
            ]

        if residual is not None:  # msgspec parsed the value as its form: a str or an int, or null if optional
            test, constants = residual.inlined(f"v{i}", f"c{i}_")
            namespace.update(constants)
            test = test if spec.required else f"v{i} is not MISSING and v{i} is not None and ({test})"
            body += [f"    if not ({test}):", *refused(f"v{i}")]
        elif kind.condition is not None:
            test, constants = kind.condition(spec).inlined(f"v{i}", f"c{i}_")
            namespace.update(constants)
            body += [f"    if not ({test}):", *refused(f"v{i}")]
        elif kind.conversion is not None:  # written into the body, as a condition is
            # Its own w<i>: statements that leave it unset on some path raise (the reference path
            # decides) rather than read the value an earlier field's conversion left in a shared one.
            lines, constants = kind.conversion(spec).inlined(f"v{i}", f"w{i}", f"c{i}_", MISSING)
            namespace.update(constants)
            body += [*(f"    {line}" for line in lines), f"    if w{i} is MISSING:", *refused(f"w{i}")]
            body.append(f"    v{i} = w{i}")
        elif kind.fast is not None:
            namespace[f"fast{i}"] = kind.fast(spec)
            body += [f"    w = fast{i}(v{i})", "    if w is MISSING:", *refused("w"), f"    v{i} = w"]
        else:  # the default of a missing value, else `check` (which raises for a value it refuses)
            namespace[f"check{i}"] = kind.check(spec)
            if not spec.required:
                body += [f"    if v{i} is MISSING or v{i} is None:", f"        v{i} = default{i}", "    else:"]
            body.append(f"    {'' if spec.required else '    '}v{i} = check{i}(v{i})")
        values.append(f"v{i}, ")
    key_lines, key_names = _staged_keys(keys, namespace)  # a key that raises: the reference path decides
    body += key_lines
    values += key_names + [f"record[{int(item)}], " for item in record_items]
    return body, values
