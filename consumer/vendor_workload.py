"""Seeded vendor-invoice events (pipeline/builtin/vendor-invoices.toml), with bad records, producer
duplicates and variant spellings, plus expected totals. Pure.

Items are known by the vendor's own natural key (vendor name, SKU); the pipeline's lookups map it to
surrogate ids assigned while it runs, matching names and SKUs after trimming and lower-casing. The
ids cannot be predicted, so the expected totals name every item by its *normalised* natural key
"vendor|sku", and a verifier joins the summaries to `items` and `vendors` to compare them.

The item universe depends on (`vendors`, `items`) alone, never on the seed: a benchmark can create
part of it beforehand (`VendorInvoiceWorkload.universe`) so that only the rest is new during a run.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from consumer.workload import (
    BAD_VALUES,
    ExpectedTotals,
    InvoiceWorkload,
    Message,
    WorkloadOptions,
    line_amounts,
)

# Canonical spellings: ASCII letters, digits and '-' only, distinct once lower-cased. Beyond these,
# vendors are named Vendor-012 and so on.
VENDOR_NAMES = (
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Soylent", "Tyrell", "Cyberdyne",
    "Wonka", "Oscorp", "Stark-Industries", "Wayne-Enterprises",
)  # fmt: skip

# Bad messages the decoder must reject, with the reason it gives. The kinds shared with the invoice
# generator are made the same way (consumer.workload.BAD_VALUES); the others break the natural key.
VENDOR_BAD_KINDS: tuple[tuple[str, str], ...] = (
    ("truncated_json", "invalid_json"),
    ("nan", "invalid_json"),
    ("not_an_object", "invalid_event"),
    ("quantity_as_string", "invalid_event"),
    ("missing_sku", "invalid_event"),
    ("missing_vendor", "invalid_event"),
    ("empty_vendor", "invalid_event"),
    ("nul_in_sku", "invalid_event"),
    ("zero_quantity", "invalid_event"),
    ("price_too_precise", "invalid_event"),
    ("bad_timestamp", "invalid_event"),
    ("empty", "empty"),
    ("deep_nesting", "invalid_json"),
    ("huge_integer", "invalid_json"),
    ("infinity", "invalid_json"),
)


def _without(event: dict[str, Any], name: str) -> bytes:
    return orjson.dumps({k: v for k, v in event.items() if k != name})


VENDOR_BAD_VALUES: dict[str, Callable[[dict[str, Any]], bytes]] = {
    **{kind: BAD_VALUES[kind] for kind, _ in VENDOR_BAD_KINDS if kind in BAD_VALUES},
    "missing_sku": lambda e: _without(e, "sku"),
    "missing_vendor": lambda e: _without(e, "vendor"),
    "empty_vendor": lambda e: orjson.dumps({**e, "vendor": ""}),
    "nul_in_sku": lambda e: orjson.dumps({**e, "sku": e["sku"] + "\u0000"}),
}


def normalise(text: str) -> str:
    """The lookups' normalisation (trim, lower), as the pipeline does it for every spelling made here
    (ASCII, padded with spaces only)."""
    return text.strip(" ").lower()


def natural_key(vendor: str, sku: str) -> str:
    """The item's name in the expected totals: "acme|sku-0042" ('|' occurs in no name or SKU)."""
    return f"{normalise(vendor)}|{normalise(sku)}"


@dataclass(frozen=True)
class Item:
    """One (vendor, SKU) pair of the universe, spelled canonically."""

    vendor: str
    sku: str

    @property
    def description(self) -> str:
        # The same for every event of the item: whichever event creates it, the row is the same.
        return f"{self.vendor} part {self.sku}"

    @property
    def key(self) -> tuple[str, str]:
        return normalise(self.vendor), normalise(self.sku)


def vendor_name(index: int) -> str:
    return VENDOR_NAMES[index] if index < len(VENDOR_NAMES) else f"Vendor-{index:03d}"


def item_universe(vendors: int, items: int) -> list[Item]:
    """`items` distinct pairs dealt round-robin over `vendors` vendors: the same SKU numbers recur at
    every vendor, so an item is told apart only by the pair (as the `items` key demands)."""
    return [Item(vendor_name(n % vendors), f"SKU-{n // vendors:04d}") for n in range(items)]


def variant(rng: random.Random, canonical: str) -> str:
    """Another spelling of `canonical` ("Acme" → " ACME "): letter case and leading/trailing spaces
    differ, never anything else, so it normalises to the same key; never `canonical` itself."""
    while True:
        cased = rng.choice((str.upper, str.lower, str.title, lambda s: s))(canonical)
        spelled = " " * rng.choice((0, 0, 1, 2)) + cased + " " * rng.choice((0, 0, 1, 3))
        if spelled != canonical:
            return spelled


@dataclass
class VendorWorkloadOptions(WorkloadOptions):
    """`items` counts distinct (vendor, SKU) pairs, dealt over `vendors` vendors; a share
    `variant_ratio` of events spells the vendor and/or the SKU differently (case, spaces)."""

    items: int = 2000
    vendors: int = 8
    variant_ratio: float = 0.15


@dataclass
class VendorExpectedTotals(ExpectedTotals):
    """ExpectedTotals keyed by natural key ("vendor|sku"), plus how many items and vendors the run
    must create: each distinct normalised key among the good events, exactly once."""

    @property
    def items(self) -> int:
        return len(self.inventory)

    @property
    def vendors(self) -> int:
        return len({key.split("|")[0] for key in self.inventory})

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in super().as_dict().items():
            out[name] = value
            if name == "transactions":  # the row counts read together
                out.update(items=self.items, vendors=self.vendors)
        return out


class VendorInvoiceWorkload(InvoiceWorkload):
    """Vendor-invoice messages in a reproducible order for a seed (the invoice generator's mix of good,
    bad and duplicate messages and its headers); `Message.item_id` holds the natural key."""

    options: VendorWorkloadOptions
    totals: VendorExpectedTotals

    def __init__(self, options: VendorWorkloadOptions) -> None:
        if options.vendors < 1 or options.items < 1:
            raise ValueError("a vendor workload needs at least one vendor and one item")
        super().__init__(options)
        self.totals = VendorExpectedTotals()
        self._items = item_universe(options.vendors, options.items)

    def universe(self) -> list[tuple[str, str]]:
        """Every normalised (vendor, sku) the events may name, in a fixed order: a benchmark that
        creates the first 95% beforehand leaves 5% of the items to be created during the run."""
        return [item.key for item in self._items]

    def _reason(self, kind: str) -> str:
        return dict(VENDOR_BAD_KINDS)[kind]

    def _count_good(self, message: Message, event: dict[str, Any]) -> None:
        moment = datetime.fromisoformat(event["ts"])
        self.totals.add_good(message.item_id or "", event["quantity"], Decimal(message.unit_price or "0"), moment)

    def _event(self, n: int) -> dict[str, Any]:
        rng, opts = self.rng, self.options
        quantity, price, moment = line_amounts(rng, opts.days)
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        item = self._items[rng.randrange(len(self._items))]
        vendor, sku = item.vendor, item.sku
        if rng.random() < opts.variant_ratio:
            spelled = rng.choice(("vendor", "sku", "both"))
            vendor = variant(rng, vendor) if spelled != "sku" else vendor
            sku = variant(rng, sku) if spelled != "vendor" else sku
        return {
            "event_id": event_id,
            "invoice_id": f"vinv-{opts.seed}-{n // 5}",
            "vendor": vendor,
            "sku": sku,
            "description": item.description,
            "quantity": quantity,
            "unit_price": price,
            "ts": moment.isoformat(timespec="milliseconds"),
        }

    def _good(self, n: int) -> tuple[Message, dict[str, Any]]:
        event = self._event(n)
        message = Message(
            key=event["invoice_id"].encode(),
            value=orjson.dumps(event),
            good=True,
            kind="good",
            event_id=event["event_id"],
            item_id=natural_key(event["vendor"], event["sku"]),
            quantity=event["quantity"],
            unit_price=repr(event["unit_price"]),  # the shortest text of the double JSON carries
            ts=event["ts"],
        )
        return message, event

    def _bad(self, n: int) -> Message:
        kind, _ = self.rng.choice(VENDOR_BAD_KINDS)
        event = self._event(n)
        return Message(key=event["invoice_id"].encode(), value=VENDOR_BAD_VALUES[kind](event), good=False, kind=kind)
