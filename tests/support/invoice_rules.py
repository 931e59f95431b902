"""The invoice pipeline's contract, written again from its definition for the oracle (pure).

The oracle must not trust the product to judge the product: good/bad labels, the dead-letter
reason each bad message must get, and the totals the summary tables must reach are computed here
from the raw bytes the broker acknowledged, with the standard library's `json` (not orjson) and
this module's own field checks. It follows `pipeline/builtin/invoices.toml` and the decoding rules the
README documents:

- an empty value is `empty`; a value longer than `max_message_bytes` is `too_large`;
- bytes that are not UTF-8 JSON, NaN/Infinity, numbers beyond a double, nesting deeper than the
  parser allows are `invalid_json`;
- a document that is not an object, or whose fields break the pipeline's rules, is `invalid_event`.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeVar

T = TypeVar("T")

# The dead-letter reason each kind of bad message the generator makes must get (the generator's
# own table is product code; this one is the test's, written from the pipeline's rules).
KIND_REASON = {
    "truncated_json": "invalid_json",
    "nan": "invalid_json",
    "not_an_object": "invalid_event",
    "quantity_as_string": "invalid_event",
    "missing_item": "invalid_event",
    "zero_quantity": "invalid_event",
    "nul_in_user": "invalid_event",
    "price_too_precise": "invalid_event",
    "bad_timestamp": "invalid_event",
    "empty": "empty",
    "deep_nesting": "invalid_json",
    "huge_integer": "invalid_json",
    "infinity": "invalid_json",
}
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576
_U64 = 2**64
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


class BadJson(ValueError):
    """The bytes are not JSON the pipelines take (reason `invalid_json`)."""


@dataclass(frozen=True)
class Invoice:
    """A valid invoice line, as the raw table must hold it."""

    event_id: uuid.UUID
    invoice_id: str
    user_id: str
    item_id: str
    quantity: int
    unit_price: Decimal
    occurred_at: datetime

    @property
    def day(self) -> str:
        return self.occurred_at.astimezone(UTC).date().isoformat()


@dataclass(frozen=True)
class Judgement:
    """What the pipeline must do with one message: write `invoice`, or dead-letter it with `reason`."""

    reason: str | None
    invoice: Invoice | None = None
    why: str = ""


def verdict(
    value: bytes | None, build: Callable[[dict[str, Any]], T], max_message_bytes: int
) -> tuple[str | None, T | None, str]:
    """(reason, event, why) for one message value: the checks every pipeline shares (empty, size,
    JSON, an object), then `build`, whose ValueError makes the message an invalid event."""
    if not value:
        return "empty", None, "empty value"
    if len(value) > max_message_bytes:
        return "too_large", None, f"{len(value)} bytes"
    try:
        document = parse_json(value)
    except BadJson as exc:
        return "invalid_json", None, str(exc)
    if not isinstance(document, dict):
        return "invalid_event", None, "not an object"
    try:
        return None, build(document), ""
    except ValueError as exc:
        return "invalid_event", None, str(exc)


def judge(value: bytes | None, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Judgement:
    """The verdict for one message value."""
    reason, invoice, why = verdict(value, _invoice, max_message_bytes)
    return Judgement(reason, invoice, why)


def parse_json(value: bytes) -> Any:
    """The document in `value`; BadJson when it is not JSON the pipelines take."""

    def constant(name: str) -> Any:
        raise BadJson(f"{name} is not JSON")

    def integer(text: str) -> Any:
        # Integers outside 64 bits are read as doubles; beyond a double they are not JSON we take.
        number = int(text) if len(text) < 30 else None
        if number is not None and -_U64 // 2 <= number < _U64:
            return number
        as_float = float(text)
        if math.isinf(as_float):
            raise BadJson("number beyond a double")
        return Decimal(text)

    def number(text: str) -> Decimal:
        if math.isinf(float(text)):
            raise BadJson("number beyond a double")
        return Decimal(text)

    try:
        text = value.decode("utf-8")
        return json.loads(text, parse_constant=constant, parse_int=integer, parse_float=number)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadJson(type(exc).__name__) from None


def _string(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or "\x00" in value:
        raise ValueError(f"{name}: not a 1-64 character string without NUL")
    return value


def _invoice(document: dict[str, Any]) -> Invoice:
    event_id, quantity, price = event_id_of(document), quantity_of(document), unit_price_of(document)
    return Invoice(
        event_id=event_id,
        invoice_id=_string(document, "invoice_id"),
        user_id=_string(document, "user_id"),
        item_id=_string(document, "item_id"),
        quantity=quantity,
        unit_price=price,
        occurred_at=parse_timestamp(document.get("ts")),
    )


# The fields the invoice pipelines share (invoices.toml, vendor-invoices.toml): the same rules.


def event_id_of(document: dict[str, Any]) -> uuid.UUID:
    raw_id = document.get("event_id")
    if not isinstance(raw_id, str):
        raise ValueError("event_id: not a string")
    try:
        return uuid.UUID(raw_id)
    except ValueError:
        raise ValueError("event_id: not a UUID") from None


def quantity_of(document: dict[str, Any]) -> int:
    quantity = document.get("quantity")
    if type(quantity) is not int or not -1_000_000 <= quantity <= 1_000_000 or quantity == 0:
        raise ValueError("quantity: not a non-zero integer within ±1,000,000")
    return quantity


def unit_price_of(document: dict[str, Any]) -> Decimal:
    price = document.get("unit_price")
    if type(price) is int:
        price = Decimal(price)
    if not isinstance(price, Decimal) or not price.is_finite():
        raise ValueError("unit_price: not a number")
    exponent = price.normalize().as_tuple().exponent if price else 0
    if isinstance(exponent, int) and exponent < -4:
        raise ValueError("unit_price: more than 4 decimal places")
    if not Decimal(0) <= price < Decimal(1_000_000_000):
        raise ValueError("unit_price: outside [0, 1e9)")
    return price


def parse_timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("ts: not a string")
    found = _RFC3339.fullmatch(value)
    if found is None:
        raise ValueError("ts: not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(found.group(n)) for n in range(1, 7))
    micros = int((found.group(7) or "0").ljust(6, "0"))
    if found.group(8):
        zone = UTC
    else:
        sign = 1 if found.group(9) == "+" else -1
        zone = timezone(sign * timedelta(hours=int(found.group(10)), minutes=int(found.group(11))))
    try:
        return datetime(year, month, day, hour, minute, second, micros, tzinfo=zone)
    except ValueError:
        raise ValueError("ts: not a valid date and time") from None


@dataclass
class Totals:
    """What the summary tables must hold for a set of invoices (each event counted once)."""

    inventory: dict[str, tuple[int, datetime]]
    daily: dict[tuple[str, str], tuple[int, Decimal, int]]


def totals(invoices: Iterable[Invoice]) -> Totals:
    inventory: dict[str, tuple[int, datetime]] = {}
    daily: dict[tuple[str, str], tuple[int, Decimal, int]] = {}
    for invoice in invoices:
        item, quantity = invoice.item_id, invoice.quantity
        held, last = inventory.get(item, (0, invoice.occurred_at))
        inventory[item] = (held + quantity, max(last, invoice.occurred_at))
        units, revenue, lines = daily.get((item, invoice.day), (0, Decimal(0), 0))
        daily[(item, invoice.day)] = (units + quantity, revenue + quantity * invoice.unit_price, lines + 1)
    return Totals(inventory, daily)


def same_row(invoice: Invoice, row: tuple[Any, ...]) -> bool:
    """Whether a `transactions` row (event_id, invoice_id, user_id, item_id, quantity, unit_price,
    occurred_at) holds exactly this invoice."""
    event_id, invoice_id, user_id, item_id, quantity, unit_price, occurred_at = row
    return (
        uuid.UUID(str(event_id)) == invoice.event_id
        and (invoice_id, user_id, item_id) == (invoice.invoice_id, invoice.user_id, invoice.item_id)
        and quantity == invoice.quantity
        and Decimal(unit_price) == invoice.unit_price
        and occurred_at == invoice.occurred_at
    )


def check_kind(kind: str, judgement: Judgement, value: bytes | None, max_message_bytes: int) -> str | None:
    """A complaint when the generator's label disagrees with the bytes it produced; None when they agree."""
    if kind == "good":
        return None if judgement.reason is None else f"labelled good, but {judgement.reason} ({judgement.why})"
    if kind not in KIND_REASON:
        return f"unknown kind {kind!r}"
    want = "too_large" if value and len(value) > max_message_bytes else KIND_REASON[kind]
    if judgement.reason != want:
        return f"kind {kind} must be {want}, but the bytes are {judgement.reason} ({judgement.why})"
    return None
