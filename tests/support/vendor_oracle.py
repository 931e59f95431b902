"""The oracle's contract for `pipeline/builtin/vendor-invoices.toml` (tests.support.oracle.Contract).

The raw rows and the summaries are keyed by surrogate ids the lookups assign while the consumer
runs; they are read here through `items` and `vendors` and named by natural key (normalised vendor
name, normalised SKU), which is what `tests.support.vendor_rules` computes from the ledger. The
reference tables themselves must hold exactly one row per distinct normalised key of the written
events: none missing, none created twice (under another spelling), none orphaned (a key whose
events were never written), every item under an existing vendor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import psycopg

from tests.support.oracle import Ruling, Verdict, WrittenRow
from tests.support.vendor_rules import NaturalKey, VendorLine, check_kind, judge, normalised, same_row, totals

# LEFT JOINs: a row whose item or vendor is missing reads as the key (None, None) and differs.
_ROWS = """
    SELECT t.event_id, t.invoice_id, v.name, i.sku, t.sku, t.quantity, t.unit_price, t.occurred_at,
           t.kafka_topic, t.kafka_partition, t.kafka_offset, i.vendor_id IS NOT DISTINCT FROM t.vendor_id
    FROM transactions t
    LEFT JOIN items i ON i.item_id = t.item_id LEFT JOIN vendors v ON v.vendor_id = i.vendor_id"""
_INVENTORY = """
    SELECT v.name, i.sku, s.quantity, s.last_event_at FROM inventory s
    LEFT JOIN items i ON i.item_id = s.item_id LEFT JOIN vendors v ON v.vendor_id = i.vendor_id"""
_DAILY = """
    SELECT v.name, i.sku, s.day, s.units, s.revenue, s.lines FROM item_sales_daily s
    LEFT JOIN items i ON i.item_id = s.item_id LEFT JOIN vendors v ON v.vendor_id = i.vendor_id"""
_ITEMS = """
    SELECT v.name, i.sku, i.description FROM items i LEFT JOIN vendors v ON v.vendor_id = i.vendor_id"""


class VendorInvoiceContract:
    """pipeline/builtin/vendor-invoices.toml (tests.support.vendor_rules)."""

    def rule(self, value: bytes | None, kind: str, max_message_bytes: int) -> Ruling[VendorLine]:
        judgement = judge(value, max_message_bytes=max_message_bytes)
        return Ruling(judgement.reason, judgement.line, check_kind(kind, judgement, value, max_message_bytes))

    def event_id(self, event: VendorLine) -> str:
        return str(event.event_id)

    def rows(self, conn: psycopg.Connection[Any]) -> list[WrittenRow]:
        rows = conn.execute(_ROWS).fetchall()
        return [(str(row[0]), (str(row[8]), int(row[9]), int(row[10])), (*row[:8], row[11])) for row in rows]

    def same_row(self, event: VendorLine, payload: tuple[Any, ...]) -> bool:
        return same_row(event, payload)

    def summaries(self, conn: psycopg.Connection[Any]) -> dict[str, dict[Any, Any]]:
        inventory = unique_by_key(((r[0], r[1]), (int(r[2]), r[3])) for r in conn.execute(_INVENTORY))
        daily = unique_by_key(
            (((r[0], r[1]), r[2].isoformat()), (int(r[3]), Decimal(r[4]), int(r[5]))) for r in conn.execute(_DAILY)
        )
        return {"inventory": inventory, "item_sales_daily": daily}

    def totals(self, events: Iterable[VendorLine]) -> dict[str, dict[Any, Any]]:
        want = totals(events)
        return {"inventory": dict(want.inventory), "item_sales_daily": dict(want.daily)}

    def check_references(self, verdict: Verdict, events: Sequence[VendorLine], conn: psycopg.Connection[Any]) -> None:
        """`items` and `vendors` hold one row per distinct normalised key of the written events (which
        are all the good ones: the rows are checked apart), normalised, each item under its vendor,
        with the description of one of its events (written by whichever event created it)."""
        items = conn.execute(_ITEMS).fetchall()
        vendors = [str(row[0]) for row in conn.execute("SELECT name FROM vendors")]
        verdict.references = {"items": len(items), "vendors": len(vendors)}
        problems = reference_problems(items, vendors, events)
        verdict.reference_mismatches = len(problems)
        if problems:
            verdict.details.append(
                f"lookups: {len(problems)} reference rows differ from the written events' keys "
                f"({len(items)} items, {len(vendors)} vendors), e.g. {problems[:3]}"
            )


def reference_problems(
    items: Sequence[tuple[Any, ...]], vendors: Sequence[str], events: Iterable[VendorLine]
) -> list[str]:
    """Where `items` ((vendor name or None when its vendor_id has no vendors row, sku, description) per
    row) and `vendors` (names) are not exactly one normalised row per distinct key of `events`, the
    written events, each item carrying the description of one of its events; [] when they are."""
    descriptions: dict[NaturalKey, set[str | None]] = {}
    for line in events:
        descriptions.setdefault(line.key, set()).add(line.description)
    problems: list[str] = []
    item_keys: Counter[NaturalKey] = Counter()
    for vendor, sku, description in items:
        key = (vendor, sku)
        item_keys[key] += 1
        if vendor is None:
            problems.append(f"item {sku!r} under a vendor_id that has no vendors row")
        elif key not in descriptions:
            problems.append(f"item {key} is no written event's key (an orphan, or not normalised)")
        elif description not in descriptions[key]:
            problems.append(f"item {key} has the description {description!r}, which none of its events carries")
    problems += [f"item {key} created {count} times" for key, count in item_keys.items() if count > 1]
    problems += [f"no item {key}" for key in descriptions if key not in item_keys]
    names = {vendor for vendor, _ in descriptions}
    problems += [f"vendor {name!r} created {n} times" for name, n in Counter(vendors).items() if n > 1]
    problems += [f"vendor {name!r} is no written event's vendor" for name in set(vendors) - names]
    problems += [f"no vendor {name!r}" for name in names - set(vendors)]
    problems += [f"{name!r} is not normalised" for name in vendors if normalised(name) != name]
    return problems


def unique_by_key(pairs: Iterable[tuple[Any, Any]]) -> dict[Any, Any]:
    """Rows by natural key; two rows under one key (two ids for one item) make that key differ."""
    found: dict[Any, Any] = {}
    for key, value in pairs:
        found[key] = ("two rows", found[key], value) if key in found else value
    return found


VENDOR_INVOICES = VendorInvoiceContract()
