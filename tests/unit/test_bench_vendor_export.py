"""The smoke test's check of the lookups variant's export finds each kind of wrong table, and passes the
right ones: a hand-made export of three vendor-invoice lines (two items of one vendor) and one bad message."""

from __future__ import annotations

import base64
import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.bench_vendor_export import check_vendor_variant

TOPIC = "lookups-topic"
EVENTS: list[dict[str, Any]] = [
    {"event_id": "00000000-0000-4000-8000-000000000001", "invoice_id": "i1", "vendor": " Acme ", "sku": "SKU-1",
     "description": "bolt", "quantity": 2, "unit_price": 1.5, "ts": "2026-01-05T10:00:00Z"},
    {"event_id": "00000000-0000-4000-8000-000000000002", "invoice_id": "i2", "vendor": "acme", "sku": "sku-1",
     "quantity": 3, "unit_price": 1.5, "ts": "2026-01-05T11:00:00Z"},
    {"event_id": "00000000-0000-4000-8000-000000000003", "invoice_id": "i3", "vendor": "ACME", "sku": "Nut",
     "description": "", "quantity": -1, "unit_price": 2, "ts": "2026-01-06T09:30:00+02:00"},
]  # fmt: skip
ROWS: dict[str, list[list[str]]] = {
    "vendors": [["vendor_id", "name"], ["7", "acme"]],
    "items": [["item_id", "vendor_id", "sku", "description"], ["70", "7", "sku-1", "bolt"], ["71", "7", "nut", ""]],
    "transactions": [
        ["event_id", "invoice_id", "vendor_id", "item_id", "sku", "quantity", "unit_price", "occurred_at",
         "kafka_topic", "kafka_partition", "kafka_offset"],
        [EVENTS[0]["event_id"], "i1", "7", "70", "sku-1", "2", "1.5000", "2026-01-05 10:00:00+00", TOPIC, "0", "0"],
        [EVENTS[1]["event_id"], "i2", "7", "70", "sku-1", "3", "1.5000", "2026-01-05 11:00:00+00", TOPIC, "0", "1"],
        [EVENTS[2]["event_id"], "i3", "7", "71", "nut", "-1", "2.0000", "2026-01-06 07:30:00+00", TOPIC, "0", "3"],
    ],
    "inventory": [
        ["item_id", "quantity", "last_event_at"], ["70", "5", "2026-01-05 11:00:00+00"],
        ["71", "-1", "2026-01-06 07:30:00+00"],
    ],
    "item_sales_daily": [
        ["item_id", "day", "units", "revenue", "lines"], ["70", "2026-01-05", "5", "7.5000", "2"],
        ["71", "2026-01-06", "-1", "-2.0000", "1"],
    ],
}  # fmt: skip


def _export(tmp_path: Path, change: Callable[[dict[str, list[list[str]]]], None] = lambda rows: None) -> Path:
    values = [orjson.dumps(EVENTS[0]), orjson.dumps(EVENTS[1]), b"{not json", orjson.dumps(EVENTS[2])]
    with (tmp_path / "lookups.ledger.jsonl").open("wb") as ledger:
        for offset, value in enumerate(values):
            entry = {"topic": TOPIC, "partition": 0, "offset": offset, "key": None,
                     "value": base64.b64encode(value).decode(), "headers": []}  # fmt: skip
            ledger.write(orjson.dumps(entry) + b"\n")
    rows = {table: [list(line) for line in lines] for table, lines in ROWS.items()}
    change(rows)
    directory = tmp_path / "microbatch_lookups"
    directory.mkdir()
    for table, lines in rows.items():
        with (directory / f"{table}.csv").open("w", newline="", encoding="utf-8") as out:
            csv.writer(out).writerows(lines)
    (directory / "dataset.txt").write_text("lookups\n")
    return directory


def test_the_right_tables_pass(tmp_path: Path) -> None:
    assert check_vendor_variant(tmp_path, _export(tmp_path)) == []


def _set(table: str, row: int, column: int, value: str) -> Callable[[dict[str, list[list[str]]]], None]:
    def change(rows: dict[str, list[list[str]]]) -> None:
        rows[table][row][column] = value

    return change


@pytest.mark.parametrize(
    ("change", "found"),
    [
        (lambda rows: rows["transactions"].append([*rows["transactions"][1][:10], "2"]), "not explained"),
        (lambda rows: rows["transactions"].pop(), "good events not written"),
        (_set("transactions", 2, 3, "71"), "not explained"),  # another item
        (_set("transactions", 2, 5, "4"), "not explained"),  # another quantity
        (_set("inventory", 1, 1, "6"), "inventory: 1 of 2 rows differ"),
        (_set("item_sales_daily", 2, 3, "-2.5"), "item_sales_daily: 1 of 2 rows differ"),
        (_set("items", 2, 2, "Nut"), "not normalised"),  # its events' key is ("acme", "nut")
        (_set("items", 1, 3, "washer"), "none of its events carries"),
        (lambda rows: rows["items"].append(["72", "7", "sku-1", "bolt"]), "created 2 times"),
        (lambda rows: rows["vendors"].append(["8", "acme"]), "vendor 'acme' created 2 times"),
        (_set("vendors", 1, 1, "Acme"), "is not normalised"),
        (lambda rows: rows["inventory"].pop(), "inventory: 1 of 2 rows differ"),  # a summary row missing
        (lambda rows: rows["item_sales_daily"].append(["99", "2026-01-05", "1", "1", "1"]), "1 of 3 rows differ"),
        (_set("transactions", 1, 2, "8"), "not explained"),  # its vendor_id is not its item's vendor's
        (_set("items", 2, 1, "8"), "under a vendor_id that has no vendors row"),
    ],
)
def test_each_wrong_table_is_found(
    tmp_path: Path, change: Callable[[dict[str, list[list[str]]]], None], found: str
) -> None:
    problems = check_vendor_variant(tmp_path, _export(tmp_path, change))
    assert any(found in problem for problem in problems), problems
