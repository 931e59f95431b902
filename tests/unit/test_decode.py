"""Decode and validation of the invoice pipeline: every kind of bad input is caught before SQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from pipeline.decode import Decoder
from pipeline.records import Record, RejectReason
from pipeline.spec_loader import load_pipeline

GOOD: dict[str, Any] = {
    "event_id": "0b7f8f0e-3f7a-4a6e-9d3c-1f2e3d4c5b6a",
    "invoice_id": "inv-1",
    "user_id": "user-1",
    "item_id": "item-1",
    "quantity": 3,
    "unit_price": 12.34,
    "ts": "2026-03-04T05:06:07.123+02:00",
    "extra": {"ignored": True},
}


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(load_pipeline("invoices"), max_message_bytes=300_000)


def rec(value: bytes | None, offset: int = 0) -> Record:
    return Record("invoice-lines", 2, offset, b"k", value, timestamp_ms=1_700_000_000_000)


def decode_one(decoder: Decoder, value: bytes | None) -> tuple[Any, Any]:
    out = decoder.decode([rec(value)])
    return (out.rows[0] if out.rows else None), (out.rejections[0] if out.rejections else None)


def test_good_event_becomes_a_typed_row_with_sequence_and_kafka_coordinates(
    decoder: Decoder,
) -> None:
    row, rejection = decode_one(decoder, orjson.dumps(GOOD))
    assert rejection is None
    seq, event_id, invoice, user, item, qty, price, ts, topic, partition, offset = row
    assert seq == 0
    assert event_id == GOOD["event_id"]  # validated text; PostgreSQL parses it once, in COPY
    assert (invoice, user, item, qty) == ("inv-1", "user-1", "item-1", 3)
    assert price == "12.34"
    assert ts == datetime(2026, 3, 4, 3, 6, 7, 123000, tzinfo=UTC)
    assert (topic, partition, offset) == ("invoice-lines", 2, 0)


def with_(**changes: Any) -> bytes:
    event = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in event.items() if v is not ...})


BAD_CASES = [
    ("empty", b"", RejectReason.EMPTY, "empty"),
    ("none", None, RejectReason.EMPTY, "empty"),
    ("too large", b"{" + b" " * 300_000 + b"}", RejectReason.TOO_LARGE, "larger than 300000"),
    ("truncated", b'{"event_id": "x", ', RejectReason.INVALID_JSON, "not valid JSON"),
    ("NaN", b'{"quantity": NaN}', RejectReason.INVALID_JSON, "not valid JSON"),
    ("Infinity", b'{"quantity": Infinity}', RejectReason.INVALID_JSON, "not valid JSON"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, RejectReason.INVALID_JSON, "not valid JSON"),
    (
        "10k-digit integer",
        b'{"quantity": ' + b"9" * 10_000 + b"}",
        RejectReason.INVALID_JSON,
        "not valid JSON",
    ),
    ("invalid utf-8", b'{"a": "\xff"}', RejectReason.INVALID_JSON, "not valid JSON"),
    ("array", b"[1, 2]", RejectReason.INVALID_EVENT, "not a JSON object"),
    ("string", b'"hello"', RejectReason.INVALID_EVENT, "not a JSON object"),
    ("missing item", with_(item_id=...), RejectReason.INVALID_EVENT, "item_id: required"),
    ("null item", with_(item_id=None), RejectReason.INVALID_EVENT, "item_id: required"),
    ("NUL in string", with_(user_id="a\u0000b"), RejectReason.INVALID_EVENT, "NUL"),
    ("empty string", with_(invoice_id=""), RejectReason.INVALID_EVENT, "shorter than 1"),
    ("long string", with_(item_id="x" * 65), RejectReason.INVALID_EVENT, "longer than 64"),
    (
        "quantity as string",
        with_(quantity="3"),
        RejectReason.INVALID_EVENT,
        "quantity: must be an integer",
    ),
    ("quantity as float", with_(quantity=3.0), RejectReason.INVALID_EVENT, "must be an integer"),
    ("quantity as bool", with_(quantity=True), RejectReason.INVALID_EVENT, "must be an integer"),
    ("zero quantity", with_(quantity=0), RejectReason.INVALID_EVENT, "must not be zero"),
    ("huge quantity", with_(quantity=1_000_001), RejectReason.INVALID_EVENT, "greater than"),
    ("negative price", with_(unit_price=-1), RejectReason.INVALID_EVENT, "less than 0"),
    ("price too big", with_(unit_price=1e9), RejectReason.INVALID_EVENT, "not less than"),
    (
        "price too precise",
        with_(unit_price=1.23456),
        RejectReason.INVALID_EVENT,
        "more than 4 decimal",
    ),
    ("price as string", with_(unit_price="1.5"), RejectReason.INVALID_EVENT, "must be a number"),
    (
        "bad uuid",
        with_(event_id="not-a-uuid"),
        RejectReason.INVALID_EVENT,
        "event_id: must be a UUID",
    ),
    ("naive timestamp", with_(ts="2026-01-01T00:00:00"), RejectReason.INVALID_EVENT, "UTC offset"),
    ("garbage timestamp", with_(ts="yesterday"), RejectReason.INVALID_EVENT, "RFC 3339"),
]


@pytest.mark.parametrize(("name", "value", "reason", "message"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_is_rejected_with_a_reason(
    decoder: Decoder, name: str, value: bytes | None, reason: RejectReason, message: str
) -> None:
    row, rejection = decode_one(decoder, value)
    assert row is None
    assert rejection is not None and rejection.reason is reason
    assert message in rejection.message


def test_rejection_messages_never_quote_the_value(decoder: Decoder) -> None:
    _, rejection = decode_one(decoder, with_(item_id="SECRET-VALUE-" + "x" * 60))
    assert rejection is not None and "SECRET" not in rejection.message


def test_good_and_bad_interleave_and_rows_map_back_to_records(decoder: Decoder) -> None:
    values = [orjson.dumps(GOOD), b"", orjson.dumps({**GOOD, "quantity": 5}), b"{"]
    out = decoder.decode([rec(v, offset=i) for i, v in enumerate(values)])
    assert [row[0] for row in out.rows] == [0, 1]  # sequence numbers of rows, not of records
    assert out.row_records == [0, 2]
    assert out.rejected_records == [1, 3]
    assert [r.reason for r in out.rejections] == [RejectReason.EMPTY, RejectReason.INVALID_JSON]


def test_integer_prices_and_short_decimals_are_accepted(decoder: Decoder) -> None:
    for price, want in ((5, "5"), (0, "0"), (999_999_999.9999, "999999999.9999"), (0.5, "0.5"), (-0.0, "-0.0")):
        row, rejection = decode_one(decoder, with_(unit_price=price))
        assert rejection is None, (price, rejection)
        assert row[6] == want


def test_fast_and_slow_paths_agree_on_every_decimal_boundary(decoder: Decoder) -> None:
    for price, ok in ((999_999_999.99, True), (1e9, False), (1e9 - 1e-4, True), (1e-4, True), (1e-5, False),
                      (12345678901.0, False), (0.0001, True), (1.23451, False)):  # fmt: skip
        row, rejection = decode_one(decoder, with_(unit_price=price))
        assert (rejection is None) is ok, (price, rejection)
        if ok:
            assert Decimal(row[6]) == Decimal(repr(price))


def test_uuids_in_other_spellings_are_accepted_and_normalised(decoder: Decoder) -> None:
    for spelling in ("0B7F8F0E-3F7A-4A6E-9D3C-1F2E3D4C5B6A", "{0b7f8f0e-3f7a-4a6e-9d3c-1f2e3d4c5b6a}",
                     "0b7f8f0e3f7a4a6e9d3c1f2e3d4c5b6a"):  # fmt: skip
        row, rejection = decode_one(decoder, with_(event_id=spelling))
        assert rejection is None
        assert str(uuid.UUID(row[1])) == GOOD["event_id"]
