"""Numbers are stored as written: decimals exact at any precision PostgreSQL holds (orjson reads
JSON numbers as doubles, 15 digits), integer bounds compared exactly, and what orjson refuses as
invalid JSON stays invalid JSON in a pipeline that reads numbers exactly."""

from __future__ import annotations

import copy
import tomllib
from decimal import Decimal
from typing import Any

import orjson
import pytest

from pipeline.decode import Decoder
from pipeline.records import Record, RejectReason
from pipeline.spec_loader import builtin_dir, load_pipeline, parse_pipeline

HEAD = (
    b'{"event_id":"0b7f8f0e-3f7a-4a6e-9d3c-1f2e3d4c5b6a","invoice_id":"i","user_id":"u","item_id":"x",'
    b'"quantity":1,"ts":"2026-01-01T00:00:00Z"'
)


def pipeline(**price: Any) -> Decoder:
    """The invoice pipeline with `unit_price` declared as `price`, plus an optional float `ratio`."""
    data: dict[str, Any] = copy.deepcopy(tomllib.loads((builtin_dir() / "invoices.toml").read_text()))
    data["fields"]["unit_price"] = {"type": "decimal", **price}
    data["fields"]["ratio"] = {"type": "float", "required": False}
    data["raw"]["columns"]["ratio"] = "ratio"
    return Decoder(parse_pipeline(data))


def decode(decoder: Decoder, price: bytes, extra: bytes = b"") -> tuple[Any, str | None]:
    """(stored unit_price, None) or (None, the rejection's message)."""
    out = decoder.decode([Record("t", 0, 0, None, HEAD + b',"unit_price":' + price + extra + b"}")])
    if out.rows:
        return out.rows[0][6], None
    return None, f"{out.rejections[0].reason}: {out.rejections[0].message}"


def test_precision_20_scale_4_is_stored_exactly() -> None:
    decoder = pipeline(precision=20, scale=4)
    assert decoder.exact
    assert decode(decoder, b"1234567890123456.7891") == ("1234567890123456.7891", None)
    assert decode(decoder, b"-9999999999999999.9999") == ("-9999999999999999.9999", None)
    _, refused = decode(decoder, b"1234567890123456.78912")
    assert refused == "invalid_event: unit_price: has more than 4 decimal places"
    _, refused = decode(decoder, b"12345678901234567.0")
    assert refused == "invalid_event: unit_price: has more than 16 digits before the decimal point"


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        (b"123456789012345678901234567890", "123456789012345678901234567890"),  # beyond 64 bits: orjson's double
        (b"0.1000000000000000000000000001", "0.1000000000000000000000000001"),
        (b"1E+300", "1" + "0" * 300),
        (b"1e-400", "0." + "0" * 399 + "1"),  # orjson reads 0.0
        (b"-0.0", "-0.0"),
        (b"2.50", "2.50"),  # unconstrained numeric keeps the scale written
        (b"0e-20000", "0." + "0" * 16383),  # only zeros beyond PostgreSQL's 16383 places: dropped
    ],
)
def test_an_unconstrained_decimal_keeps_every_digit(written: bytes, stored: str) -> None:
    assert decode(pipeline(), written) == (stored, None)


def test_an_unconstrained_decimal_refuses_what_postgresql_numeric_cannot_hold() -> None:
    _, refused = decode(pipeline(), b"1e-20000")
    assert refused == "invalid_event: unit_price: has more than 16383 decimal places"


def test_scale_is_judged_on_the_value_and_a_precision_without_scale_means_scale_0() -> None:
    assert decode(pipeline(precision=20, scale=1), b"2.50") == ("2.5", None)  # 2.5 fits one place
    assert decode(pipeline(precision=20, scale=2), b"2.5000000") == ("2.50", None)
    # numeric(10) is numeric(10, 0): PostgreSQL would round 1.5 to 2 without a word.
    _, refused = decode(pipeline(precision=10), b"1.5")
    assert refused == "invalid_event: unit_price: has more than 0 decimal places"
    assert decode(pipeline(precision=10), b"15") == ("15", None)
    assert decode(pipeline(precision=10), b"1.5e1") == ("15", None)


def test_the_common_path_stays_orjson_only() -> None:
    assert not Decoder(load_pipeline("invoices")).exact  # numeric(14,4): a double holds it
    assert not pipeline(precision=15, scale=2).exact
    assert pipeline(precision=16, scale=2).exact
    assert pipeline().exact


def test_other_numbers_in_an_exact_pipeline_read_as_before() -> None:
    decoder = pipeline(precision=30, scale=10)
    value, _ = decode(decoder, b"1.5", b',"ratio":0.1')
    out = decoder.decode([Record("t", 0, 0, None, HEAD + b',"unit_price":1,"ratio":1e-5}')])
    assert value == "1.5" and out.rows[0][8] == 1e-5 and type(out.rows[0][8]) is float
    for quantity, verdict in ((b"3", 3), (b"3.0", None), (b"1e2", None), (b"99999999999999999999", None)):
        value = HEAD.replace(b'"quantity":1', b'"quantity":' + quantity) + b',"unit_price":1}'
        out = decoder.decode([Record("t", 0, 0, None, value)])
        assert (out.rows[0][5] if out.rows else None) == verdict, quantity


def test_the_hook_of_an_exact_pipeline_sees_decimals() -> None:
    seen: list[Any] = []

    def hook(event: dict[str, Any]) -> dict[str, Any]:
        seen.append(event["unit_price"])
        return event

    data: dict[str, Any] = copy.deepcopy(tomllib.loads((builtin_dir() / "invoices.toml").read_text()))
    data["fields"]["unit_price"] = {"type": "decimal", "precision": 24, "scale": 6}
    decoder = Decoder(parse_pipeline(data), transform=hook)
    out = decoder.decode([Record("t", 0, 0, None, HEAD + b',"unit_price":123456789012345678.123456}')])
    assert seen == [Decimal("123456789012345678.123456")] and out.rows[0][6] == "123456789012345678.123456"


INVALID = [
    ("NaN", b"NaN"),
    ("Infinity", b"Infinity"),
    ("-Infinity", b"-Infinity"),
    ("beyond a double", b"1e400"),
    ("10k digits", b"9" * 10_000),
    ("leading zero", b"01.5"),
    ("no digit after the point", b"1."),
    ("deep nesting", b"1," + b'"deep":' + b"[" * 100_000 + b"]" * 100_000),
    ("1025 levels", b"1," + b'"deep":' + b"[" * 1024 + b"]" * 1024),
    ("invalid UTF-8", b'1,"name":"\xff"'),
    ("surrogate", b'1,"name":"\\ud800"'),
    ("UTF-8 surrogate", b'1,"name":"\xed\xa0\x80"'),
]


@pytest.mark.parametrize("value", [v for _, v in INVALID], ids=[name for name, _ in INVALID])
def test_what_orjson_refuses_stays_invalid_json_in_an_exact_pipeline(value: bytes) -> None:
    _, refused = decode(pipeline(), value)
    assert refused is not None and refused.startswith("invalid_json: not valid JSON")


def test_what_orjson_accepts_an_exact_pipeline_accepts_up_to_orjson_s_depth() -> None:
    # 1024 levels, orjson's most: more than the standard library's parser takes by default.
    value, refused = decode(pipeline(), b"1.25", b',"deep":' + b"[" * 1023 + b"]" * 1023)
    assert (value, refused) == ("1.25", None)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(HEAD + b',"unit_price":1,"deep":' + b"[" * 1024 + b"]" * 1024 + b"}")


@pytest.mark.parametrize(
    ("rules", "accepted", "refused"),
    [
        ({"min": 0.5}, [1, 2, 10**18], [0, -1, -(2**63)]),
        ({"min_exclusive": -0.5}, [0, 5], [-1]),
        ({"max": 9.99}, [9, -5], [10, 2**63 - 1]),
        ({"max_exclusive": 10.5}, [10], [11]),
        ({"min": 0.5, "max": 1.5, "nonzero": True}, [1], [0, 2]),
        ({"min": "-9223372036854775808.5", "max": "9223372036854775806.999999999999999999"}, [-(2**63)], [2**63 - 1]),
    ],
)
def test_integer_bounds_with_fractions_compare_exactly(
    rules: dict[str, Any], accepted: list[int], refused: list[int]
) -> None:
    data: dict[str, Any] = copy.deepcopy(tomllib.loads((builtin_dir() / "invoices.toml").read_text()))
    data["fields"]["quantity"] = {"type": "integer", **rules}
    decoder = Decoder(parse_pipeline(data))
    for quantity in [*accepted, *refused]:
        value = HEAD.replace(b'"quantity":1', b'"quantity":%d' % quantity) + b',"unit_price":1}'
        out = decoder.decode([Record("t", 0, 0, None, value)])
        assert bool(out.rows) is (quantity in accepted), (rules, quantity)
        if out.rows:
            assert out.rows[0][5] == quantity
        else:
            assert out.rejections[0].reason is RejectReason.INVALID_EVENT
