"""decode() never raises: whatever a field check, a Kafka attribute or the transform hook raises
rejects that one record as invalid_event, with the exception's type as the error class and a message
that names the field and gives the error's text, never the value."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import orjson
import pytest

from pipeline import field_types
from pipeline.decode import DecodedBatch, Decoder
from pipeline.field_types import FieldType, Rules
from pipeline.records import Record, RejectReason
from pipeline.spec import PipelineSpec
from pipeline.spec_loader import builtin_dir, parse_pipeline

EVENT: dict[str, Any] = {
    "event_id": "0b7f8f0e-3f7a-4a6e-9d3c-1f2e3d4c5b6a", "invoice_id": "i", "user_id": "u", "item_id": "x",
    "quantity": 1, "unit_price": 1.5, "ts": "2026-01-01T00:00:00Z",
}  # fmt: skip
NOW_MS = 1_700_000_000_123


def invoices(**extra_fields: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(tomllib.loads((builtin_dir() / "invoices.toml").read_text()))
    for name, field in extra_fields.items():
        data["fields"][name] = field
        data["raw"]["columns"][name] = name
    return data


def with_kafka_timestamp() -> PipelineSpec:
    data = invoices()
    data["raw"]["columns"]["kafka_ts"] = {"kafka": "timestamp"}
    return parse_pipeline(data)


def record(timestamp_ms: int | None = NOW_MS, offset: int = 0, **changes: Any) -> Record:
    return Record("t", 0, offset, b"k", orjson.dumps({**EVENT, **changes}), (), timestamp_ms)


def one_verdict_each(out: DecodedBatch, count: int) -> None:
    verdicts = [*out.row_records, *out.rejected_records, *out.skipped]
    assert sorted(verdicts) == list(range(count))


@pytest.mark.parametrize(
    ("timestamp_ms", "error_class"),
    [
        (1_700_000_000_000_000, "ValueError"),  # CreateTime written in microseconds: year 55840
        (-(10**15), "ValueError"),
        (2**63 - 1, "ValueError"),
        (10**30, "OverflowError"),
        (-(10**30), "OverflowError"),
        (10**400, "OverflowError"),
    ],
    ids=["microseconds", "negative", "int64-max", "1e30", "-1e30", "1e400"],
)
def test_a_kafka_timestamp_out_of_range_rejects_its_record(timestamp_ms: int, error_class: str) -> None:
    decoder = Decoder(with_kafka_timestamp())
    out = decoder.decode([record(offset=0), record(timestamp_ms, offset=1), record(offset=2)])
    one_verdict_each(out, 3)
    assert out.row_records == [0, 2] and out.rejected_records == [1]
    (rejection,) = out.rejections
    assert rejection.reason is RejectReason.INVALID_EVENT
    assert rejection.error_class == error_class
    assert rejection.message.startswith(f"kafka_ts (kafka timestamp): {error_class}: ")
    assert str(timestamp_ms) not in rejection.message


def test_kafka_timestamps_in_range_are_exact_and_a_missing_one_is_refused() -> None:
    decoder = Decoder(with_kafka_timestamp())
    out = decoder.decode([record(0), record(-1), record(NOW_MS), record(None)])
    assert [row[-1].isoformat() for row in out.rows] == [
        "1970-01-01T00:00:00+00:00",
        "1969-12-31T23:59:59.999000+00:00",
        "2023-11-14T22:13:20.123000+00:00",
    ]
    # The column is NOT NULL (column_required): the database would refuse NULL; decode refuses it first.
    assert out.rejected_records == [3]
    assert out.rejections[0].message == "kafka_ts (kafka timestamp): the message has no timestamp"


@pytest.fixture
def fragile_type() -> Iterator[Callable[[Exception], None]]:
    """A field type `fragile` whose check raises whatever the test sets, quoting the value."""
    raising: list[Exception] = []

    def check(rules: Rules) -> Callable[[Any], Any]:
        def run(value: Any) -> Any:
            if value == "boom":
                raise type(raising[0])(f"cannot handle {value!r}: {raising[0]}")
            return value

        return run

    field_types.register(FieldType("fragile", lambda rules: "text", check))
    yield raising.append
    field_types.unregister("fragile")


@pytest.mark.parametrize(
    "exc", [OverflowError("too big"), ZeroDivisionError("division by zero"), KeyError("k"), RecursionError("deep")]
)
def test_anything_a_field_check_raises_rejects_its_record_without_the_value(
    fragile_type: Callable[[Exception], None], exc: Exception
) -> None:
    fragile_type(exc)
    decoder = Decoder(parse_pipeline(invoices(note={"type": "fragile", "path": "meta.note"})))
    out = decoder.decode([record(meta={"note": "fine"}), record(meta={"note": "boom"}, offset=1)])
    one_verdict_each(out, 2)
    assert out.row_records == [0] and out.rows[0][8] == "fine"
    (rejection,) = out.rejections
    name = type(exc).__name__
    assert (rejection.reason, rejection.error_class) == (RejectReason.INVALID_EVENT, name)
    assert rejection.message.startswith(f"note: {name}: ") and "cannot handle <value>" in rejection.message
    assert "boom" not in rejection.message


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    ("returned", "error_class", "message"),
    [
        # A value no JSON document holds, but a hook can return: float(10**400) raises OverflowError.
        ({"ratio": 10**400}, "FieldError", "ratio: is too large for a double precision number"),
        ({"ratio": Decimal("sNaN")}, "FieldError", "ratio: must be a finite number"),
        ({"ratio": Decimal("-Infinity")}, "FieldError", "ratio: must be a finite number"),
        ({"unit_price": Decimal("NaN")}, "FieldError", "unit_price: must be a finite number"),
        ({"unit_price": Decimal("1E+999999")}, "FieldError", "unit_price: has more than 10 digits"),
        ({"quantity": 10**5000}, "FieldError", "quantity: outside the 64-bit integer range"),
        ({"user_id": b"bytes"}, "FieldError", "user_id: must be a string"),
    ],
)
def test_values_a_hook_makes_up_are_rejected_not_raised(
    returned: dict[str, Any], error_class: str, message: str
) -> None:
    spec = parse_pipeline(invoices(ratio={"type": "float", "required": False}))
    decoder = Decoder(spec, transform=lambda event: {**event, **returned})
    out = decoder.decode([record()])
    (rejection,) = out.rejections
    assert (rejection.reason, rejection.error_class) == (RejectReason.INVALID_EVENT, error_class)
    assert rejection.message.startswith(message)


def test_a_hook_raising_an_exception_that_cannot_be_printed_is_still_a_rejection() -> None:
    def hook(event: dict[str, Any]) -> dict[str, Any]:
        raise Unprintable

    out = Decoder(parse_pipeline(invoices()), transform=hook).decode([record(), record(offset=1)])
    assert [r.message for r in out.rejections] == ["transform raised Unprintable: (no description)"] * 2
    assert [r.error_class for r in out.rejections] == ["Unprintable"] * 2


def test_values_that_are_not_bytes_are_rejected_not_raised() -> None:
    decoder = Decoder(parse_pipeline(invoices()))
    odd: list[Any] = [12345, object(), ["a"]]
    out = decoder.decode([Record("t", 0, n, None, value) for n, value in enumerate(odd)])
    one_verdict_each(out, 3)
    assert [r.reason for r in out.rejections] == [RejectReason.INVALID_EVENT] * 2 + [RejectReason.INVALID_JSON]
