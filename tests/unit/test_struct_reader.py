"""The decoder's fast path (pipeline.struct_reader) against its reference path (orjson, then the
compiled row reader): a row from the struct reader is exactly the reference path's row, it gives none
for a document orjson refuses, and the decoder's verdicts are the same with it and without it."""

from __future__ import annotations

import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from consumer.generators import new_workload, workload_options
from pipeline import struct_reader as struct_reader_module
from pipeline.decode import STRUCT_MIN_BATCH, STRUCT_REST_BATCHES, DecodedBatch, Decoder
from pipeline.field_types import MISSING, FieldType, register, unregister
from pipeline.fields import FieldError
from pipeline.records import Record
from pipeline.spec import PipelineSpec
from pipeline.spec_loader import load_pipeline, parse_pipeline
from pipeline.struct_reader import MAX_UNREAD_KEYS, NESTING_DEPTH, StructReader, struct_reader
from tests.support.decode_cases import (
    ENTROPY,
    Entropy,
    Num,
    batch,
    cases,
    dump,
    field_value,
    json_junk,
    number_text,
    pipeline,
)
from tests.support.field_oracle import ABSENT
from tests.support.struct_rows import assert_agrees, reference

FUZZ = os.environ.get("MICROBATCH_FUZZ") == "1"  # `make fuzz`: 100,000 new cases per property
SETTINGS = settings(
    max_examples=100_000 if FUZZ else 3_000,
    derandomize=not FUZZ,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INVOICE = load_pipeline("invoices")
GOOD = {
    "event_id": "099950d8-36f6-45cc-81e7-4ef5e8e25d94",
    "invoice_id": "inv-1",
    "user_id": "user-1",
    "item_id": "item-00001",
    "quantity": 2,
    "unit_price": 72.9,
    "ts": "2026-01-03T19:46:25.068+00:00",
    "channel": "web",
}


def without_fast_path(decoder: Decoder) -> Decoder:
    decoder._struct = None
    return decoder


def verdicts(out: DecodedBatch) -> tuple[Any, ...]:
    """Every verdict, rows spelled out value by value with their types (0.0 and -0.0 differ, so do 1
    and 1.0, and two moments at different offsets)."""
    rows = [[(type(value).__name__, repr(value)) for value in row] for row in out.rows]
    rejections = [(r.reason, r.message, r.error_class) for r in out.rejections]
    return rows, out.row_records, rejections, out.rejected_records, out.skipped


def top_level(spec: PipelineSpec) -> PipelineSpec:
    """`spec` with each field at a top-level key of its own, named apart from the field when the
    generated path was nested (so that the struct reader reads it)."""
    data = spec.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    for name, field in data["fields"].items():
        if "." in field.get("path", ""):
            field["path"] = f"key {name}"
    return parse_pipeline(data)


def flat_case(e: Entropy) -> tuple[PipelineSpec, list[Record]]:
    spec = top_level(pipeline(e))
    return spec, batch(e, spec)[0]


@SETTINGS
@given(case=ENTROPY.map(flat_case))
def test_a_row_read_as_a_struct_is_the_reference_paths_row(case: tuple[PipelineSpec, list[Record]]) -> None:
    spec, records = case
    reader = StructReader(spec.fields, (0, 1, 2))
    for record in records:  # learn the keys the documents hold, as the decoder would
        try:
            event = orjson.loads(record.value) if record.value else None
        except orjson.JSONDecodeError:
            continue
        if type(event) is dict:
            reader.learn(event)
    for record in records:
        if record.value:
            assert_agrees(spec, reader, record.value)


@SETTINGS
@given(case=ENTROPY.map(flat_case) | cases().map(lambda case: case[:2]))
def test_the_decoder_gives_the_same_verdicts_with_the_fast_path_and_without(
    case: tuple[PipelineSpec, list[Record]],
) -> None:
    spec, records = case
    twice = [*records, *records]  # the second time round, the keys of the first are learned
    assert verdicts(Decoder(spec).decode(twice)) == verdicts(without_fast_path(Decoder(spec)).decode(twice))


def invoice_document(e: Entropy) -> bytes:
    """A valid invoice event with some fields replaced by values aimed at them, and unread keys from a
    small set (so that they are learned) holding any number or JSON value."""
    event: dict[str, Any] = dict(GOOD)
    for name, field in INVOICE.fields.items():
        if e.maybe(3):
            event[name] = field_value(e, field)
    for _ in range(e.below(3)):
        event[e.pick(("channel", "note", "x"))] = Num(number_text(e)) if e.maybe() else json_junk(e)
    return dump({k: v for k, v in event.items() if v is not ABSENT}).encode()


@SETTINGS
@given(e=ENTROPY)
def test_invoice_events_with_aimed_values_read_as_structs_are_the_reference_paths_rows(e: Entropy) -> None:
    reader = StructReader(INVOICE.fields, (0, 1, 2))
    documents = [invoice_document(e) for _ in range(4)]
    for document in documents:
        try:
            event = orjson.loads(document)
        except orjson.JSONDecodeError:
            continue
        reader.learn(event)
    for document in documents:
        assert_agrees(INVOICE, reader, document)


# What orjson refuses in a key the pipeline does not read, and what it reads differently from msgspec.
HOSTILE_VALUES = [
    b"1e400", b"-1E309", b"1.7976931348623159e308", b"9" * 400, b"-" + b"9" * 400, b"1" + b"0" * 310 + b".5",
    b"18446744073709551615", b"18446744073709551616", b"-9223372036854775809", b"1e-400", b"-0", b"-0.0",
    b'"\xff"', b'"\xed\xa0\x80"', b'"\\ud800"', b'"\\udc00\\ud800"', b'"\\u0000"', b'"a\nb"', b'"\\x"',
    b"[1e400]", b'{"a":1e400}', b"[" * 1100 + b"]" * 1100, b"NaN", b"Infinity", b"01", b"1.", b".5", b"+1",
    b"tru", b"nul", b'"\\ud83d\\ude00"', b'"\xf0\x9f\x98\x80"', b"[]", b"{}", b"null", b"true", b'""',
]  # fmt: skip


@pytest.mark.parametrize("token", HOSTILE_VALUES, ids=lambda t: t[:20].decode(errors="replace"))
def test_a_value_the_pipeline_does_not_read_is_parsed_all_the_same(token: bytes) -> None:
    reader = StructReader(INVOICE.fields, (0, 1, 2))
    reader.learn(GOOD)
    assert reader.unread_keys == ("channel",)
    document = orjson.dumps(GOOD).replace(b'"web"', token)
    assert_agrees(INVOICE, reader, document)
    if reference(INVOICE, document) is None:
        assert reader.read(document, 7, ("t", 3, 100)) is None


@pytest.mark.parametrize(
    "document",
    [
        b'{"event_id":"099950d8-36f6-45cc-81e7-4ef5e8e25d94","event_id":"x"}',
        b'\xef\xbb\xbf{"quantity":2}',
        b'{"quantity":2} x',
        b'{"quantity":2}\x00',
        b'{"quantity":2,}',
        b"\x0b{}",
        b'{"quantity":2}\x0c',
        b"[]",
        b"",
    ],
)
def test_documents_that_are_not_plain_objects_take_the_reference_path(document: bytes) -> None:
    reader = StructReader(INVOICE.fields, (0, 1, 2))
    assert not assert_agrees(INVOICE, reader, document)


def test_duplicate_keys_give_the_last_value_as_orjson_does() -> None:
    reader = StructReader(INVOICE.fields, (0, 1, 2))
    reader.learn(GOOD)
    for first, last in ((b"5", b"2"), (b'"x"', b"2"), (b"2", b'"x"'), (b"0", b"3")):
        document = orjson.dumps(GOOD).replace(b'"quantity":2', b'"quantity":' + first + b',"quantity":' + last)
        assert_agrees(INVOICE, reader, document)


def test_keys_are_learned_up_to_a_bound_and_keys_msgspec_cannot_name_are_not() -> None:
    reader = StructReader(INVOICE.fields, (0, 1, 2))
    reader.learn({**GOOD, "nested": {"a": 1}, "list": [1]})
    assert reader.unread_keys == ("channel", "nested", "list")
    assert assert_agrees(INVOICE, reader, orjson.dumps({**GOOD, "nested": {"a": [1, {"b": None}]}, "list": []}))
    for key in ("tab\tkey", 'quote"key', "back\\slash", "x" * 300):
        reader.learn({**GOOD, key: 1})
        document = orjson.dumps({**GOOD, key: 1})
        assert reader.read(document, 0, ("t", 0, 0)) is None  # read by the reference path
    assert reader.unread_keys == ("channel", "nested", "list")
    reader.learn({f"k{i}": i for i in range(2 * MAX_UNREAD_KEYS)})
    assert len(reader.unread_keys) == MAX_UNREAD_KEYS


def test_readers_of_the_same_struct_share_its_decoder_and_no_other() -> None:
    first, same, other_order, more = (StructReader(INVOICE.fields, (0, 1, 2)) for _ in range(4))
    first.learn({**GOOD, "a": 1, "b": 2})
    same.learn({**GOOD, "a": 3, "b": 4})
    other_order.learn({**GOOD, "b": 1, "a": 2})
    more.learn({**GOOD, "a": 1, "b": 2, "c": 3})
    assert first.parse is same.parse
    assert len({id(first.parse), id(other_order.parse), id(more.parse)}) == 3
    # Each reads by its own keys: a key one of them did not learn sends the document to the reference path.
    with_c = orjson.dumps({**GOOD, "a": 1, "b": [2], "c": 3})
    assert first.read(with_c, 0, ("t", 0, 0)) is None
    assert more.read(with_c, 0, ("t", 0, 0)) is not None
    for reader in (first, same, other_order, more):
        assert_agrees(INVOICE, reader, orjson.dumps({**GOOD, "a": {"x": 1e300}, "b": "1e400"}))
        assert_agrees(INVOICE, reader, orjson.dumps({**GOOD, "b": 1}).replace(b'"b":1', b'"b":1e400'))


NESTED_HOSTILE = [
    b"[1e400]", b'{"a":[-1E309]}', b'["\xff"]', b'{"a":"\\ud800"}', b'["a\nb"]', b'{"\xff":1}', b"[NaN]", b"[01]",
    b"[" * 1023 + b"]" * 1023, b"[" * 1024 + b"]" * 1024, b"[" + b"9" * 400 + b"]", b'{"a":1,}', b"[1,]",
    b'[1, 2.5e3, "\\ud83d\\ude00", {"b": [true, null]}]', b'["\\u0000"]',
]  # fmt: skip


@pytest.mark.parametrize("token", NESTED_HOSTILE, ids=lambda t: t[:20].decode(errors="replace"))
def test_a_list_or_object_the_pipeline_does_not_read_is_parsed_as_orjson_would(token: bytes) -> None:
    reader = StructReader(INVOICE.fields, (0, 1, 2))
    reader.learn({**GOOD, "channel": []})
    document = orjson.dumps(GOOD).replace(b'"web"', token)
    if reference(INVOICE, document) is None:
        assert reader.read(document, 7, ("t", 3, 100)) is None
    else:  # read, or left to the reference path (msgspec nests less deep than orjson)
        assert assert_agrees(INVOICE, reader, document) or token.startswith(b"[" * (NESTING_DEPTH + 1))


@pytest.mark.parametrize(
    "tail",
    [
        b',"meta":[1e400],"meta":1}', b',"meta":"\xff","meta":1}', b',"meta":{"a":"\xed\xa0\x80"},"\\u006deta":null}',
        b',"meta":[1],"meta":[2]}', b',"meta":[1e400], "meta" :1}', b',"meta":["\xff"],"note":"\\"meta\\""}',
    ],
)  # fmt: skip
def test_an_unread_key_written_twice_is_parsed_twice(tail: bytes) -> None:
    """orjson parses (and refuses) every occurrence of a key and keeps the last; so must the struct."""
    head = orjson.dumps(GOOD)[:-1]
    decoder = Decoder(INVOICE)
    records = [Record("t", 0, 0, None, head + b',"meta":[]}'), Record("t", 0, 1, None, head + tail)]
    assert verdicts(decoder.decode(records)) == verdicts(without_fast_path(Decoder(INVOICE)).decode(records))
    assert decoder._struct is not None and "meta" in decoder._struct.unread_keys
    assert_agrees(INVOICE, decoder._struct, head + tail)


def test_an_unread_key_may_hold_any_value_as_deep_as_the_nesting_depth() -> None:
    reader = StructReader(INVOICE.fields, (0, 1, 2))
    reader.learn(GOOD)
    for value in (["web", 1], {"a": [1, None, {"b": 2.5}]}, None, [[[[[[1]]]]]]):
        assert assert_agrees(INVOICE, reader, orjson.dumps({**GOOD, "channel": value}))
    deeper = orjson.dumps({**GOOD, "channel": [[[[[[[1]]]]]]]})
    assert reader.read(deeper, 7, ("t", 3, 100)) is None  # read by the reference path


def test_an_optional_field_reads_null_as_the_reference_path_does_even_for_a_type_that_takes_null() -> None:
    def check(rules: Any) -> Any:
        def nullable(value: Any) -> Any:
            if value is not None and type(value) is not str:
                raise FieldError("must be a string or null")
            return "NULL" if value is None else value

        return nullable

    def fast(rules: Any) -> Any:
        return lambda value: ("NULL" if value is None else value) if value is None or type(value) is str else MISSING

    register(FieldType("nullable_text", lambda rules: "text", check, fast))
    try:
        data: dict[str, object] = {
            "name": "p", "topics": ["t"], "group": "g",
            "fields": {"a": {"type": "string"}, "z": {"type": "nullable_text", "required": False, "default": "dflt"}},
            "raw": {"table": "r", "columns": {"a": "a", "z": "z"}, "dedupe_key": ["a"]},
        }  # fmt: skip
        spec = parse_pipeline(data)
        reader = StructReader(spec.fields, (0, 1, 2))
        for document in (b'{"a":"x","z":null}', b'{"a":"x"}', b'{"a":"x","z":"q"}', b'{"a":"x","z":1}'):
            assert_agrees(spec, reader, document)
        assert reader.read(b'{"a":"x","z":null}', 7, ("t", 3, 100)) == (7, "x", "NULL", "t", 3, 100)
    finally:
        unregister("nullable_text")


def test_the_fast_path_rests_after_a_batch_it_mostly_left_to_the_reference_path() -> None:
    decoder = Decoder(INVOICE)
    odd = [orjson.dumps({**GOOD, f"key {n}": n, 'quote"': n}) for n in range(STRUCT_MIN_BATCH)]
    decoder.decode([Record("t", 0, n, None, value) for n, value in enumerate(odd)])
    assert decoder._struct_rest == STRUCT_REST_BATCHES
    good = [Record("t", 0, n, None, orjson.dumps(GOOD)) for n in range(STRUCT_MIN_BATCH)]
    for rest in range(STRUCT_REST_BATCHES, 0, -1):
        assert decoder._struct_rest == rest
        assert verdicts(decoder.decode(good)) == verdicts(without_fast_path(Decoder(INVOICE)).decode(good))
    assert decoder._struct_rest == 0
    decoder.decode(good)
    assert decoder._struct_rest == 0  # read by the fast path again


def test_a_key_learned_in_a_batch_lets_the_rest_of_that_batch_take_the_fast_path() -> None:
    """The batch is one comprehension (Decoder._decode_numbered), but a key learned from one record is
    used for the next: only the first document with it takes the reference path, so the fast path does
    not rest; rows are numbered in order around the records that made none."""
    decoder = Decoder(INVOICE)
    new_key = [orjson.dumps({**GOOD, "event_id": f"099950d8-36f6-45cc-81e7-{n:012d}", "new": n}) for n in range(80)]
    values = [*new_key[:10], b"", orjson.dumps({**GOOD, "quantity": 0}), b"{", *new_key[10:]]
    records = [Record("t", 0, n, None, value) for n, value in enumerate(values)]
    out = decoder.decode(records)
    assert verdicts(out) == verdicts(without_fast_path(Decoder(INVOICE)).decode(records))
    assert [row[0] for row in out.rows] == list(range(80))
    assert out.row_records == [*range(10), *range(13, 83)]
    assert out.rejected_records == [10, 11, 12]
    assert decoder._struct is not None and "new" in decoder._struct.unread_keys
    assert decoder._struct_rest == 0  # 3 of 83 left to the reference path, not 80


def test_small_batches_are_counted_together_and_an_empty_one_does_not_count() -> None:
    decoder = Decoder(INVOICE)
    odd = [Record("t", 0, n, None, orjson.dumps({**GOOD, 'quote"': n})) for n in range(8)]
    for _ in range(STRUCT_MIN_BATCH // 8 - 1):
        decoder.decode(odd)
        assert decoder._struct_rest == 0
    decoder.decode(odd)
    assert decoder._struct_rest == STRUCT_REST_BATCHES
    decoder.decode([])
    assert decoder._struct_rest == STRUCT_REST_BATCHES


def test_keys_are_learned_only_from_documents_that_make_a_row() -> None:
    decoder = Decoder(INVOICE)
    refused = orjson.dumps({**GOOD, "quantity": 0, "junk": 1})
    decoder.decode([Record("t", 0, 0, None, refused)])
    assert decoder._struct is not None and "junk" not in decoder._struct.unread_keys
    decoder.decode([Record("t", 0, 1, None, orjson.dumps({**GOOD, "junk": 1}))])
    assert "junk" in decoder._struct.unread_keys


def test_no_fast_path_when_msgspec_does_not_refuse_what_this_relies_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert struct_reader(INVOICE.fields) is not None
    monkeypatch.setattr(struct_reader_module, "_MUST_REFUSE", [*struct_reader_module._MUST_REFUSE, b'{"k":"v"}'])
    struct_reader_module._msgspec_parses_as_relied_on.cache_clear()
    try:
        assert struct_reader(INVOICE.fields) is None
        assert Decoder(INVOICE)._struct is None
    finally:
        struct_reader_module._msgspec_parses_as_relied_on.cache_clear()


def test_a_pipeline_the_struct_cannot_read_has_no_fast_path() -> None:
    data = INVOICE.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    nested = parse_pipeline({**data, "fields": {**data["fields"], "item_id": {"type": "string", "path": "item.id"}}})
    assert struct_reader(nested.fields) is None
    shared = parse_pipeline({**data, "fields": {**data["fields"], "user_id": {"type": "string", "path": "item_id"}}})
    assert struct_reader(shared.fields) is None
    assert Decoder(INVOICE, transform=lambda event: event)._struct is None


@pytest.mark.parametrize("name", ["invoices", "vendor-invoices"])
def test_the_builtin_pipelines_events_are_read_as_structs_with_the_same_verdicts(name: str) -> None:
    spec = load_pipeline(name)
    options = workload_options(name, count=3_000, seed=11, bad_ratio=0.05, duplicate_ratio=0.0, items=None)
    messages = list(new_workload(options).messages())
    records = [Record("t", n % 3, n, m.key, m.value) for n, m in enumerate(messages)]
    decoder = Decoder(spec)
    assert verdicts(decoder.decode(records)) == verdicts(without_fast_path(Decoder(spec)).decode(records))
    reader = decoder._struct
    assert reader is not None
    read = sum(reader.read(m.value, 0, ("t", 0, 0)) is not None for m in messages if m.good)
    good = sum(m.good for m in messages)
    assert read >= 0.95 * good, (read, good)


def test_uuids_in_other_spellings_are_left_to_the_reference_path() -> None:
    reader = StructReader(INVOICE.fields, (0, 1, 2))
    reader.learn(GOOD)
    upper = orjson.dumps({**GOOD, "event_id": str(GOOD["event_id"]).upper()})
    assert reader.read(upper, 0, ("t", 0, 0)) is None
    assert Decoder(INVOICE).decode([Record("t", 0, 0, None, upper)]).rows[0][1] == GOOD["event_id"]
