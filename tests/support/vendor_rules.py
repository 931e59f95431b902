"""The vendor-invoice pipeline's contract, written again from its definition for the oracle (pure).

It follows `pipeline/builtin/vendor-invoices.toml`, not the product's code nor the generator's tables
(consumer/vendor_workload.py): the same decoding rules as the invoice pipeline
(`tests.support.invoice_rules`), with the fields `vendor` (1-64 characters), `sku` (1-64) and an
optional `description` (at most 200) in place of `user_id` and `item_id`.

The lookups name every item by its natural key (vendor name, SKU) after trimming " \\t\\r\\n" from both
ends and lower-casing: the reference rows `vendors(name)` and `items(vendor_id, sku)` hold the
normalised spellings, once each, and the summaries are keyed by the item's surrogate id, so the
totals here are keyed by the normalised (vendor, sku) a verifier joins them back to.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tests.support.invoice_rules import (
    DEFAULT_MAX_MESSAGE_BYTES,
    event_id_of,
    parse_timestamp,
    quantity_of,
    unit_price_of,
    verdict,
)

# The dead-letter reason each kind of bad message the vendor generator makes must get (the test's
# own table, from the pipeline's rules).
KIND_REASON = {
    "truncated_json": "invalid_json",
    "nan": "invalid_json",
    "not_an_object": "invalid_event",
    "quantity_as_string": "invalid_event",
    "missing_sku": "invalid_event",
    "missing_vendor": "invalid_event",
    "empty_vendor": "invalid_event",
    "nul_in_sku": "invalid_event",
    "zero_quantity": "invalid_event",
    "price_too_precise": "invalid_event",
    "bad_timestamp": "invalid_event",
    "empty": "empty",
    "deep_nesting": "invalid_json",
    "huge_integer": "invalid_json",
    "infinity": "invalid_json",
}
TRIMMED = " \t\r\n"  # what `normalize = ["trim", ...]` removes from both ends

NaturalKey = tuple[str, str]  # (vendor name, sku), normalised


def normalised(text: str) -> str:
    """`normalize = ["trim", "lower"]`: the spelling the reference tables hold."""
    return text.strip(TRIMMED).lower()


@dataclass(frozen=True)
class VendorLine:
    """A valid vendor-invoice line: what the raw table must hold, and the item it names."""

    event_id: uuid.UUID
    invoice_id: str
    vendor: str  # as sent
    sku: str  # as sent
    description: str | None
    quantity: int
    unit_price: Decimal
    occurred_at: datetime

    @property
    def key(self) -> NaturalKey:
        return normalised(self.vendor), normalised(self.sku)

    @property
    def day(self) -> str:
        return self.occurred_at.astimezone(UTC).date().isoformat()


@dataclass(frozen=True)
class VendorJudgement:
    """What the pipeline must do with one message: write `line`, or dead-letter it with `reason`."""

    reason: str | None
    line: VendorLine | None = None
    why: str = ""


def judge(value: bytes | None, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> VendorJudgement:
    """The verdict for one message value."""
    reason, line, why = verdict(value, _line, max_message_bytes)
    return VendorJudgement(reason, line, why)


def _text(document: dict[str, Any], name: str, max_length: int, *, required: bool = True) -> str | None:
    value = document.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not int(required) <= len(value) <= max_length or "\x00" in value:
        raise ValueError(f"{name}: not a {int(required)}-{max_length} character string without NUL")
    return value


def _line(document: dict[str, Any]) -> VendorLine:
    event_id, quantity, price = event_id_of(document), quantity_of(document), unit_price_of(document)
    vendor, sku = _text(document, "vendor", 64), _text(document, "sku", 64)
    invoice_id = _text(document, "invoice_id", 64)
    assert vendor is not None and sku is not None and invoice_id is not None  # required
    return VendorLine(
        event_id=event_id,
        invoice_id=invoice_id,
        vendor=vendor,
        sku=sku,
        description=_text(document, "description", 200, required=False),
        quantity=quantity,
        unit_price=price,
        occurred_at=parse_timestamp(document.get("ts")),
    )


def check_kind(kind: str, judgement: VendorJudgement, value: bytes | None, max_message_bytes: int) -> str | None:
    """A complaint when the generator's label disagrees with the bytes it produced; None when they agree."""
    if kind == "good":
        return None if judgement.reason is None else f"labelled good, but {judgement.reason} ({judgement.why})"
    if kind not in KIND_REASON:
        return f"unknown kind {kind!r}"
    want = "too_large" if value and len(value) > max_message_bytes else KIND_REASON[kind]
    if judgement.reason != want:
        return f"kind {kind} must be {want}, but the bytes are {judgement.reason} ({judgement.why})"
    return None


@dataclass
class VendorTotals:
    """What the summary tables must hold for a set of lines (each event counted once), by natural key."""

    inventory: dict[NaturalKey, tuple[int, datetime]]
    daily: dict[tuple[NaturalKey, str], tuple[int, Decimal, int]]


def totals(lines: Iterable[VendorLine]) -> VendorTotals:
    inventory: dict[NaturalKey, tuple[int, datetime]] = {}
    daily: dict[tuple[NaturalKey, str], tuple[int, Decimal, int]] = {}
    for line in lines:
        key, quantity = line.key, line.quantity
        held, last = inventory.get(key, (0, line.occurred_at))
        inventory[key] = (held + quantity, max(last, line.occurred_at))
        units, revenue, count = daily.get((key, line.day), (0, Decimal(0), 0))
        daily[(key, line.day)] = (units + quantity, revenue + quantity * line.unit_price, count + 1)
    return VendorTotals(inventory, daily)


def same_row(line: VendorLine, row: tuple[Any, ...]) -> bool:
    """Whether a `transactions` row joined to its item and vendor (event_id, invoice_id, the vendor's
    name, the item's sku, the row's sku, quantity, unit_price, occurred_at, whether the row's vendor_id
    is its item's) holds exactly this line: its item's natural key is the line's, normalised."""
    event_id, invoice_id, vendor, sku, raw_sku, quantity, unit_price, occurred_at, same_vendor = row
    return (
        uuid.UUID(str(event_id)) == line.event_id
        and invoice_id == line.invoice_id
        and (vendor, sku) == line.key
        and raw_sku == line.key[1]
        and same_vendor is True
        and quantity == line.quantity
        and unit_price is not None
        and Decimal(unit_price) == line.unit_price
        and occurred_at == line.occurred_at
    )
