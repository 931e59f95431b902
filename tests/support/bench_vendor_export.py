"""The bench smoke test's own check of the lookups variant's export (the vendor-invoices pipeline).

The same contract as tests.support.vendor_oracle, read from the CSV files `python -m bench --export`
leaves (the bench's database is gone by then) instead of a live database. The tables are keyed by the
ids the lookups assigned; they are named here by natural key (normalised vendor name, normalised SKU)
through the exported `items` and `vendors`, which is what tests.support.vendor_rules computes from the
ledger:

- every `transactions` row is a good ledger message, found by (kafka_topic, kafka_partition,
  kafka_offset), with the same payload, its item's key being the message's, normalised; no event id
  is written twice, and every good event id is written;
- the summaries equal the totals over all good lines, by natural key;
- `items` and `vendors` hold exactly one normalised row per distinct key of the good lines.
"""

from __future__ import annotations

import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.support.bench_export import Coordinates, differences_in, ledger, read_csv, timestamp
from tests.support.invoice_rules import DEFAULT_MAX_MESSAGE_BYTES
from tests.support.oracle import entry_bytes
from tests.support.vendor_oracle import reference_problems, unique_by_key
from tests.support.vendor_rules import VendorLine, check_kind, judge, same_row, totals

TRANSACTIONS = (
    "event_id", "invoice_id", "vendor_id", "item_id", "sku", "quantity", "unit_price", "occurred_at",
    "kafka_topic", "kafka_partition", "kafka_offset",
)  # fmt: skip
NULL = "\\N"  # how the export writes NULL (bench/export.py)


def _text(field: str) -> str | None:
    return None if field == NULL else field


def check_vendor_variant(export: Path, directory: Path) -> list[str]:
    """Every problem found in DIR/<variant> (the lookups variant, which consumes its whole dataset)
    against the ledger of the dataset its dataset.txt names; [] when exact."""
    entries = ledger(export, (directory / "dataset.txt").read_text().strip())
    good_at: dict[Coordinates, VendorLine] = {}
    first: dict[uuid.UUID, VendorLine] = {}
    problems: list[str] = []
    for entry in entries:
        value = entry_bytes(entry, "value")
        judgement = judge(value)
        complaint = check_kind(entry["kind"], judgement, value, DEFAULT_MAX_MESSAGE_BYTES) if "kind" in entry else None
        if complaint is not None:
            problems.append(f"generator label disagrees with the bytes at {entry['offset']}: {complaint}")
        if judgement.line is not None:
            good_at[(entry["topic"], entry["partition"], entry["offset"])] = judgement.line
            first.setdefault(judgement.line.event_id, judgement.line)
    if not first:
        problems.append("the ledger holds no good message")
    vendors = {int(vendor_id): name for vendor_id, name in read_csv(directory / "vendors.csv", ("vendor_id", "name"))}
    items = {
        int(item_id): (int(vendor_id), sku, _text(description))
        for item_id, vendor_id, sku, description in read_csv(
            directory / "items.csv", ("item_id", "vendor_id", "sku", "description")
        )
    }

    def key_of(item_id: str) -> tuple[str | None, str | None]:
        item = items.get(int(item_id))
        return (None, None) if item is None else (vendors.get(item[0]), item[1])

    written: Counter[uuid.UUID] = Counter()
    unexplained: list[str] = []
    for row in read_csv(directory / "transactions.csv", TRANSACTIONS):
        event_id, invoice_id, vendor_id, item_id, sku, quantity, price, occurred_at, topic, partition, offset = row
        written[uuid.UUID(event_id)] += 1
        item = items.get(int(item_id))
        payload: tuple[Any, ...] = (
            event_id, invoice_id, *key_of(item_id), sku, int(quantity), Decimal(price), timestamp(occurred_at),
            item is not None and item[0] == int(vendor_id),
        )  # fmt: skip
        line = good_at.get((topic, int(partition), int(offset)))
        if line is None or not same_row(line, payload):
            unexplained.append(f"row at {(topic, partition, offset)}: {payload}")
    if unexplained:
        problems.append(f"{len(unexplained)} rows not explained exactly, e.g. {unexplained[:3]}")
    if twice := [str(event_id) for event_id, count in written.items() if count > 1]:
        problems.append(f"{len(twice)} event ids written more than once, e.g. {twice[:3]}")
    if missing := [str(event_id) for event_id in first if event_id not in written]:
        problems.append(f"{len(missing)} good events not written, e.g. {missing[:3]}")
    want = totals(first.values())
    inventory = unique_by_key(
        (key_of(item_id), (int(quantity), timestamp(last)))
        for item_id, quantity, last in read_csv(directory / "inventory.csv", ("item_id", "quantity", "last_event_at"))
    )
    daily = unique_by_key(
        ((key_of(item_id), day), (int(units), Decimal(revenue), int(lines)))
        for item_id, day, units, revenue, lines in read_csv(
            directory / "item_sales_daily.csv", ("item_id", "day", "units", "revenue", "lines")
        )
    )
    problems += differences_in("inventory", inventory, want.inventory)
    problems += differences_in("item_sales_daily", daily, want.daily)
    named = [(vendors.get(vendor_id), sku, description) for vendor_id, sku, description in items.values()]
    problems += reference_problems(named, list(vendors.values()), first.values())
    return problems
