"""Vendor-invoice lines for the `[[lookups]]` tests (pipeline/builtin/vendor-invoices.toml), the totals
they must produce, and what the database holds, all keyed by the *normalised* natural key.

Pure except for the readers at the end (`inventory_by_key` and friends), which query PostgreSQL. The
surrogate ids are assigned while the consumer runs, so nothing here predicts them: the readers join
`inventory`, `item_sales_daily` and `transactions` to `items` and `vendors` and name each row by its
natural key, which is what the expected totals are keyed by.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, LiteralString

import orjson
import psycopg

from pipeline.spec_loader import builtin_dir

# What the lookups' `trim` removes (pipeline.lookup_spec.TRIM_CHARACTERS), then `lower`.
TRIM = " \t\r\n"
EPOCH = datetime(2026, 3, 1, tzinfo=UTC)

Key = tuple[str, str]  # (normalised vendor name, normalised sku)


def normalise(text: str) -> str:
    return text.strip(TRIM).lower()


def spelling(rng: random.Random, text: str) -> str:
    """Another spelling of `text` that normalises to the same key: case, and padding at either end."""
    cased = rng.choice((str.upper, str.lower, str.title, str.swapcase, lambda s: s))(text)
    return rng.choice(("", " ", "  ", "\t")) + cased + rng.choice(("", " ", "\n", " \t "))


@dataclass(frozen=True)
class Line:
    """One invoice line as produced: the vendor and sku exactly as spelled in the message."""

    event_id: str
    invoice_id: str
    vendor: str
    sku: str
    description: str | None
    quantity: int
    unit_price: Decimal
    ts: datetime

    @property
    def key(self) -> Key:
        return normalise(self.vendor), normalise(self.sku)

    def value(self) -> bytes:
        event: dict[str, Any] = {
            "event_id": self.event_id,
            "invoice_id": self.invoice_id,
            "vendor": self.vendor,
            "sku": self.sku,
            "quantity": self.quantity,
            "unit_price": float(self.unit_price),  # the shortest repr: exactly these digits
            "ts": self.ts.isoformat(timespec="milliseconds"),
        }
        if self.description is not None:
            event["description"] = self.description
        return orjson.dumps(event)


class LineMaker:
    """Seeded lines: `line(vendor, sku)` spells the names as given; `spelled(...)` varies them."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.count = 0

    def line(self, vendor: str, sku: str, *, description: str | None = None) -> Line:
        rng = self.rng
        self.count += 1
        quantity = rng.randint(1, 20) if rng.random() < 0.9 else -rng.randint(1, 5)
        cents = rng.randint(50, 99_999)
        moment = EPOCH + timedelta(milliseconds=rng.randrange(3 * 86_400_000))
        return Line(
            event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            invoice_id=f"vinv-{self.count // 4}",
            vendor=vendor,
            sku=sku,
            description=description,
            quantity=quantity,
            unit_price=Decimal(cents) / 100,
            ts=moment,
        )

    def spelled(self, vendor: str, sku: str, *, variants: float = 0.5) -> Line:
        """A line for (vendor, sku), each spelled differently with probability `variants`."""
        rng = self.rng
        if rng.random() < variants:
            vendor = spelling(rng, vendor)
        if rng.random() < variants:
            sku = spelling(rng, sku)
        return self.line(vendor, sku, description=f"part {normalise(sku)} of {normalise(vendor)}")


def universe(vendors: int, skus: int) -> list[Key]:
    """`vendors` times `skus` canonical keys; the same sku names recur at every vendor (told apart by the pair)."""
    return [(f"Vendor-{v:02d}", f"SKU-{s:03d}") for v in range(vendors) for s in range(skus)]


# -- the totals the lines must produce ---------------------------------------------------------------


@dataclass
class Expected:
    """Per normalised key: inventory (quantity, last event) and item_sales_daily (units, revenue, lines)."""

    events: dict[str, Line] = field(default_factory=dict)

    def add(self, lines: Iterable[Line]) -> None:
        for line in lines:
            self.events.setdefault(line.event_id, line)  # a producer duplicate counts once

    @property
    def keys(self) -> set[Key]:
        return {line.key for line in self.events.values()}

    @property
    def vendors(self) -> set[str]:
        return {vendor for vendor, _ in self.keys}

    def inventory(self) -> dict[Key, tuple[int, datetime]]:
        out: dict[Key, tuple[int, datetime]] = {}
        for line in self.events.values():
            quantity, last = out.get(line.key, (0, line.ts))
            out[line.key] = (quantity + line.quantity, max(last, line.ts))
        return out

    def daily(self) -> dict[tuple[str, str, date], tuple[int, Decimal, int]]:
        out: dict[tuple[str, str, date], tuple[int, Decimal, int]] = {}
        for line in self.events.values():
            key = (*line.key, line.ts.astimezone(UTC).date())
            units, revenue, count = out.get(key, (0, Decimal(0), 0))
            out[key] = (units + line.quantity, revenue + line.quantity * line.unit_price, count + 1)
        return out


# -- the pipeline file --------------------------------------------------------------------------------


def vendor_pipeline(tmp_path: Path, unique: str) -> Path:
    """The built-in vendor-invoices pipeline with this test's own topic, group and dead-letter topic."""
    text = (builtin_dir() / "vendor-invoices.toml").read_text()
    for old, new in (
        ('topics = ["vendor-invoice-lines"]', f'topics = ["vendors-{unique}"]'),
        ('group = "microbatch-vendor-invoices"', f'group = "group-{unique}"'),
        ('dead_letter_topic = "vendor-invoice-lines.dlq"', f'dead_letter_topic = "vendors-{unique}.dlq"'),
    ):
        assert old in text, f"the built-in vendor-invoices.toml no longer says {old}"
        text = text.replace(old, new)
    path = tmp_path / "vendor-invoices.toml"
    path.write_text(text)
    return path


# -- what the database holds, by natural key ----------------------------------------------------------


def _rows(database_url: str, query: LiteralString) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(query).fetchall()


def inventory_by_key(database_url: str) -> dict[Key, tuple[int, datetime]]:
    rows = _rows(
        database_url,
        "SELECT v.name, i.sku, s.quantity, s.last_event_at FROM inventory s "
        "LEFT JOIN items i ON i.item_id = s.item_id LEFT JOIN vendors v ON v.vendor_id = i.vendor_id",
    )
    return {(vendor, sku): (int(quantity), last) for vendor, sku, quantity, last in rows}


def daily_by_key(database_url: str) -> dict[tuple[str, str, date], tuple[int, Decimal, int]]:
    rows = _rows(
        database_url,
        "SELECT v.name, i.sku, s.day, s.units, s.revenue, s.lines FROM item_sales_daily s "
        "LEFT JOIN items i ON i.item_id = s.item_id LEFT JOIN vendors v ON v.vendor_id = i.vendor_id",
    )
    return {(vendor, sku, day): (int(units), Decimal(revenue), int(n)) for vendor, sku, day, units, revenue, n in rows}


def transaction_keys(database_url: str) -> dict[str, Key]:
    """Each written event's natural key, read through its ids (event_id → (vendor name, sku))."""
    rows = _rows(
        database_url,
        "SELECT t.event_id::text, v.name, i.sku FROM transactions t "
        "LEFT JOIN items i ON i.item_id = t.item_id LEFT JOIN vendors v ON v.vendor_id = i.vendor_id",
    )
    return {event_id: (vendor, sku) for event_id, vendor, sku in rows}


@dataclass(frozen=True)
class Mappings:
    """The reference tables' health: every count that must be zero is named as such."""

    vendors: int
    distinct_vendors: int
    items: int
    distinct_items: int
    orphan_vendors: int  # no item, or no transaction, refers to them
    orphan_items: int  # no transaction refers to them
    inconsistent_rows: int  # a transaction whose vendor_id or sku disagrees with its item's
    unnormalised: int  # a stored name or sku that normalisation would change
    # Identity values drawn without a row to show for it: an INSERT that waited for another writer's
    # uncommitted key and then skipped it (ON CONFLICT DO NOTHING draws the value first), or a rollback.
    vendor_ids_unused: int
    item_ids_unused: int


def mappings(database_url: str) -> Mappings:
    (row,) = _rows(
        database_url,
        "SELECT (SELECT count(*) FROM vendors), (SELECT count(DISTINCT name) FROM vendors), "
        "(SELECT count(*) FROM items), (SELECT count(DISTINCT (vendor_id, sku)) FROM items), "
        "(SELECT count(*) FROM vendors v WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.vendor_id = v.vendor_id) "
        " OR NOT EXISTS (SELECT 1 FROM transactions t WHERE t.vendor_id = v.vendor_id)), "
        "(SELECT count(*) FROM items i WHERE NOT EXISTS (SELECT 1 FROM transactions t WHERE t.item_id = i.item_id)), "
        "(SELECT count(*) FROM transactions t LEFT JOIN items i ON i.item_id = t.item_id "
        " WHERE i.item_id IS NULL OR i.vendor_id <> t.vendor_id OR i.sku <> t.sku), "
        "(SELECT count(*) FROM vendors WHERE name <> lower(btrim(name, E' \\t\\r\\n'))) + "
        "(SELECT count(*) FROM items WHERE sku <> lower(btrim(sku, E' \\t\\r\\n'))), "
        "(SELECT coalesce(last_value, 0) FROM pg_sequences "
        " WHERE format('%I.%I', schemaname, sequencename) = pg_get_serial_sequence('vendors', 'vendor_id')) "
        " - (SELECT count(*) FROM vendors), "
        "(SELECT coalesce(last_value, 0) FROM pg_sequences "
        " WHERE format('%I.%I', schemaname, sequencename) = pg_get_serial_sequence('items', 'item_id')) "
        " - (SELECT count(*) FROM items)",
    )
    return Mappings(*(int(value) for value in row))


def natural_key_is_unique(database_url: str, table: str, columns: Sequence[str]) -> bool:
    """True when `table` has a UNIQUE (or primary key) constraint on exactly `columns`."""
    rows = _rows(
        database_url,
        "SELECT c.conrelid::regclass::text, array_agg(a.attname::text ORDER BY a.attname) FROM pg_constraint c "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) "
        "WHERE c.contype IN ('u', 'p') GROUP BY c.oid, c.conrelid",
    )
    return any(name == table and sorted(found) == sorted(columns) for name, found in rows)
