"""The decoder's fast path (pipeline.struct_reader) against its reference path (orjson, then the
compiled row reader): a row from the struct reader is exactly the reference path's row, it gives none
for a document orjson refuses, and the decoder's verdicts are the same with it and without it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from consumer.generators import new_workload, workload_options
from pipeline.decode import DecodedBatch, Decoder
from pipeline.fields import FieldError
from pipeline.records import Record
from pipeline.row_compiler import compile_row
from pipeline.spec import PipelineSpec
from pipeline.spec_loader import load_pipeline, parse_pipeline
from pipeline.struct_reader import MAX_UNREAD_KEYS, StructReader, struct_readable, struct_reader
from tests.support.decode_cases import ENTROPY, Entropy, Num, cases, dump, field_value, json_junk, number_text
from tests.support.field_oracle import ABSENT

SETTINGS = settings(
    max_examples=3_000,
    derandomize=True,
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


def same(got: tuple[Any, ...], want: tuple[Any, ...]) -> bool:
    """Equal value by value, of the same type and spelling (0.0 and -0.0 differ)."""
    return len(got) == len(want) and all(
        type(a) is type(b) and repr(a) == repr(b) for a, b in zip(got, want, strict=True)
    )


def reference(spec: PipelineSpec, value: Any, seq: int, record: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The reference path's row, or None where it gives none (invalid JSON, not an object, a field refused)."""
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(event) is not dict:
        return None
    try:
        return compile_row(spec.fields, (0, 1, 2))(event, seq, record)
    except FieldError:
        return None


def assert_agrees(spec: PipelineSpec, reader: StructReader, value: Any) -> bool:
    """The struct reader's row for `value` is None or the reference path's; True when it gave one."""
    record = ("t", 3, 100)
    got = reader.read(value, 7, record)
    if got is None:
        return False
    want = reference(spec, value, 7, record)
    assert want is not None, ("the struct reader wrote what the reference path refuses", value, got)
    assert same(got, want), (value, got, want)
    return True


def without_fast_path(decoder: Decoder) -> Decoder:
    decoder._struct = None
    return decoder


def verdicts(out: DecodedBatch) -> tuple[Any, ...]:
    rejections = [(r.reason, r.message, r.error_class) for r in out.rejections]
    return out.rows, out.row_records, rejections, out.rejected_records, out.skipped


@SETTINGS
@given(case=cases())
def test_a_row_read_as_a_struct_is_the_reference_paths_row(case: Any) -> None:
    spec, records, _, _ = case
    if not struct_readable(spec.fields):
        assert struct_reader(spec.fields) is None
        return
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
@given(case=cases())
def test_the_decoder_gives_the_same_verdicts_with_the_fast_path_and_without(case: Any) -> None:
    spec, records, _, _ = case
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
    if reference(INVOICE, document, 7, ("t", 3, 100)) is None:
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


def test_keys_are_learned_up_to_a_bound_and_odd_keys_are_not_tried_twice() -> None:
    reader = StructReader(INVOICE.fields)
    reader.learn({**GOOD, "nested": {"a": 1}, "list": [1]})
    assert reader.unread_keys == ("channel",)  # a list or an object is not learned
    reader.learn({**GOOD, "tab\tkey": 1, 'quote"key': 1, "x" * 300: 1})
    assert reader.unread_keys == ("channel",)
    document = orjson.dumps({**GOOD, "tab\tkey": 1})
    assert reader.read(document, 0, ()) is None  # read by the reference path
    reader.learn({f"k{i}": i for i in range(2 * MAX_UNREAD_KEYS)})
    assert len(reader.unread_keys) == MAX_UNREAD_KEYS


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
