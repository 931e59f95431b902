"""The oracle's vendor-invoice contract (tests/support/vendor_rules.py, vendor_oracle.py) agrees with the
generator where it must, judges from the bytes, and fails on reference rows that are not exactly one per
written key."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from consumer.vendor_workload import VendorInvoiceWorkload, VendorWorkloadOptions
from tests.support.oracle import Verdict
from tests.support.vendor_oracle import VENDOR_INVOICES
from tests.support.vendor_rules import KIND_REASON, VendorLine, check_kind, judge, same_row, totals

GOOD = (
    b'{"event_id":"5b0f3a52-4a8e-4a44-9d53-0c1e4f9a7a10","invoice_id":"i","vendor":" ACME ","sku":"Sku-7",'
    b'"description":"Acme part SKU-7","quantity":2,"unit_price":1.5,"ts":"2026-01-01T10:00:00+02:00"}'
)


def _good_lines(workload: VendorInvoiceWorkload) -> list[VendorLine]:
    lines: dict[uuid.UUID, VendorLine] = {}
    for message in workload.messages():
        judgement = judge(message.value)
        assert check_kind(message.kind, judgement, message.value, 1_048_576) is None, message.kind
        if judgement.line is not None:
            lines.setdefault(judgement.line.event_id, judgement.line)
    return list(lines.values())


def test_every_generated_vendor_message_is_judged_as_its_kind_demands() -> None:
    workload = VendorInvoiceWorkload(VendorWorkloadOptions(count=3000, seed=5, bad_ratio=0.3, duplicate_ratio=0.05))
    kinds = {message.kind for message in workload.messages()}
    assert kinds == {"good", *KIND_REASON}
    again = VendorInvoiceWorkload(VendorWorkloadOptions(count=3000, seed=5, bad_ratio=0.3, duplicate_ratio=0.05))
    assert len(_good_lines(again)) == again.totals.good


def test_the_totals_per_natural_key_are_the_generators() -> None:
    workload = VendorInvoiceWorkload(VendorWorkloadOptions(count=4000, seed=9, bad_ratio=0.02, duplicate_ratio=0.02))
    want = totals(_good_lines(workload))
    expected = workload.totals.as_dict()
    inventory = {
        "|".join(key): {"quantity": quantity, "last_event_at": last.astimezone(UTC).isoformat()}
        for key, (quantity, last) in want.inventory.items()
    }
    daily = {f"{'|'.join(key)}|{day}": values for (key, day), values in want.daily.items()}
    assert inventory == expected["inventory"]
    assert daily == {
        key: (v["units"], Decimal(v["revenue"]), v["lines"]) for key, v in expected["item_sales_daily"].items()
    }
    assert len(want.inventory) == expected["items"]


def test_a_row_must_name_the_normalised_key_through_its_ids() -> None:
    line = judge(GOOD).line
    assert line is not None and line.key == ("acme", "sku-7")
    row = (uuid.UUID("5b0f3a52-4a8e-4a44-9d53-0c1e4f9a7a10"), "i", "acme", "sku-7", "sku-7", 2, Decimal("1.5000"),
           datetime(2026, 1, 1, 8, tzinfo=UTC), True)  # fmt: skip
    assert same_row(line, row)
    assert not same_row(line, (*row[:2], " ACME ", *row[3:]))  # stored as sent, not normalised
    assert not same_row(line, (*row[:4], "Sku-7", *row[5:]))  # the raw row's sku is the item's
    assert not same_row(line, (*row[:8], False))  # vendor_id differs from its item's
    assert judge(GOOD.replace(b'"vendor":" ACME "', b'"vendor":""')).reason == "invalid_event"
    assert judge(GOOD.replace(b'"Sku-7"', b'"' + b"s" * 65 + b'"')).reason == "invalid_event"


class _Cursor:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def __iter__(self) -> Any:
        return iter(self.rows)


class _Tables:
    """Stands in for a connection: `items` (vendor name, sku, description) and `vendors` (name)."""

    def __init__(self, items: list[tuple[Any, ...]], vendors: list[str]) -> None:
        self.items, self.vendors = items, vendors

    def execute(self, query: str) -> _Cursor:
        return _Cursor(self.items if "FROM items" in query else [(name,) for name in self.vendors])


def _references(items: list[tuple[Any, ...]], vendors: list[str]) -> Verdict:
    line = judge(GOOD).line
    assert line is not None
    verdict = Verdict()
    VENDOR_INVOICES.check_references(verdict, [line], cast(Any, _Tables(items, vendors)))
    return verdict


def test_reference_rows_must_be_one_per_written_key() -> None:
    right = ("acme", "sku-7", "Acme part SKU-7")
    assert _references([right], ["acme"]).reference_mismatches == 0
    assert _references([right], ["acme"]).references == {"items": 1, "vendors": 1}
    assert _references([right, right], ["acme"]).reference_mismatches == 1  # created twice
    assert _references([right, ("acme", "sku-8", None)], ["acme"]).reference_mismatches == 1  # an orphan
    assert _references([], ["acme"]).reference_mismatches == 1  # missing
    assert _references([right], ["acme", "ACME"]).reference_mismatches == 2  # another spelling, not normalised
    assert _references([(None, "sku-7", "Acme part SKU-7")], ["acme"]).reference_mismatches >= 1  # no vendor row
    assert _references([("acme", "sku-7", "other")], ["acme"]).reference_mismatches == 1  # not its description
