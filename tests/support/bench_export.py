"""The bench smoke test's own check of `python -m bench --export DIR` (test code, not the harness's).

It reads what each variant left in its tables (CSV from COPY, parsed here to Python values) and the
ledger of what the broker acknowledged, judges every message itself (`tests.support.invoice_rules`)
and compares:

- every `transactions` row is a good ledger message, found by (kafka_topic, kafka_partition,
  kafka_offset), with the same payload; no event id is written twice;
- a variant that consumes everything (`complete`) wrote every good event id, and its summaries equal
  the totals over all good invoices;
- a time-bounded variant (`complete=False`, naive) wrote every good event of the prefix of each
  partition it reached, and its summaries equal the totals over exactly the invoices it wrote.
"""

from __future__ import annotations

import csv
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from tests.support.invoice_rules import DEFAULT_MAX_MESSAGE_BYTES, Invoice, Totals, check_kind, judge, same_row, totals
from tests.support.oracle import Entry, entry_bytes, read_ledger

Coordinates = tuple[str, int, int]
K = TypeVar("K")
V = TypeVar("V")
TRANSACTIONS = (
    "event_id", "invoice_id", "user_id", "item_id", "quantity", "unit_price", "occurred_at",
    "kafka_topic", "kafka_partition", "kafka_offset",
)  # fmt: skip
INVENTORY = ("item_id", "quantity", "last_event_at")
ITEM_SALES_DAILY = ("item_id", "day", "units", "revenue", "lines")


@dataclass(frozen=True)
class Row:
    """A `transactions` row as exported."""

    event_id: uuid.UUID
    invoice_id: str
    user_id: str
    item_id: str
    quantity: int
    unit_price: Decimal
    occurred_at: datetime
    topic: str
    partition: int
    offset: int

    @property
    def coordinates(self) -> Coordinates:
        return (self.topic, self.partition, self.offset)

    @property
    def payload(self) -> tuple[Any, ...]:
        """The first seven columns, as `invoice_rules.same_row` takes them."""
        return (
            self.event_id, self.invoice_id, self.user_id, self.item_id, self.quantity, self.unit_price,
            self.occurred_at,
        )  # fmt: skip


@dataclass
class Tables:
    """One variant's exported tables, parsed."""

    rows: list[Row]
    inventory: dict[str, tuple[int, datetime]]
    daily: dict[tuple[str, str], tuple[int, Decimal, int]]


def timestamp(text: str) -> datetime:
    """PostgreSQL's timestamptz text ('2026-01-05 10:00:00.123+00'); it must carry its offset."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    return moment


def read_csv(path: Path, columns: tuple[str, ...]) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        lines = list(csv.reader(handle))
    if not lines or tuple(lines[0]) != columns:
        raise ValueError(f"{path.name}: header {lines[:1]} is not {list(columns)}")
    return lines[1:]


def parse_transactions(lines: Iterable[list[str]]) -> list[Row]:
    rows = []
    for event_id, invoice_id, user_id, item_id, quantity, price, occurred_at, topic, partition, offset in lines:
        payload = (uuid.UUID(event_id), invoice_id, user_id, item_id, int(quantity), Decimal(price))
        rows.append(Row(*payload, timestamp(occurred_at), topic, int(partition), int(offset)))
    return rows


def parse_inventory(lines: Iterable[list[str]]) -> dict[str, tuple[int, datetime]]:
    return {item: (int(quantity), timestamp(last)) for item, quantity, last in lines}


def parse_daily(lines: Iterable[list[str]]) -> dict[tuple[str, str], tuple[int, Decimal, int]]:
    return {
        (item, datetime.strptime(day, "%Y-%m-%d").date().isoformat()): (int(units), Decimal(revenue), int(count))
        for item, day, units, revenue, count in lines
    }


def read_tables(directory: Path) -> Tables:
    return Tables(
        rows=parse_transactions(read_csv(directory / "transactions.csv", TRANSACTIONS)),
        inventory=parse_inventory(read_csv(directory / "inventory.csv", INVENTORY)),
        daily=parse_daily(read_csv(directory / "item_sales_daily.csv", ITEM_SALES_DAILY)),
    )


def ledger(directory: Path, dataset: str) -> list[Entry]:
    """DIR/<dataset>.ledger.jsonl: every message the broker acknowledged for that dataset."""
    path = directory / f"{dataset}.ledger.jsonl"
    if not path.exists():
        raise FileNotFoundError(path)
    return read_ledger([path])


def same_messages(written: list[Entry], acknowledged: list[Entry]) -> list[str]:
    """Problems when the messages a variant wrote without Kafka (pg_ceiling's in-memory records) are
    not exactly the messages the broker acknowledged for its dataset (same key and value, as often)."""

    def messages(entries: list[Entry]) -> Counter[tuple[bytes | None, bytes | None]]:
        return Counter((entry_bytes(entry, "key"), entry_bytes(entry, "value")) for entry in entries)

    mine, theirs = messages(written), messages(acknowledged)
    if mine == theirs:
        return []
    return [
        f"the records written are not the acknowledged messages: {sum((mine - theirs).values())} extra, "
        f"{sum((theirs - mine).values())} missing (of {len(acknowledged)})"
    ]


@dataclass
class _Judged:
    good_at: dict[Coordinates, Invoice]
    first: dict[uuid.UUID, Invoice]  # each good event id's first copy in the ledger
    labels: list[str]


def _judge(entries: list[Entry]) -> _Judged:
    judged = _Judged({}, {}, [])
    for entry in entries:
        value = entry_bytes(entry, "value")
        judgement = judge(value)
        if "kind" in entry:
            complaint = check_kind(entry["kind"], judgement, value, DEFAULT_MAX_MESSAGE_BYTES)
            if complaint is not None:
                judged.labels.append(f"{entry['topic']}[{entry['partition']}]@{entry['offset']}: {complaint}")
        if judgement.invoice is not None:
            judged.good_at[(entry["topic"], entry["partition"], entry["offset"])] = judgement.invoice
            judged.first.setdefault(judgement.invoice.event_id, judgement.invoice)
    return judged


def good_events(entries: list[Entry]) -> tuple[int, int]:
    """(distinct valid events, their summed quantity): what a raw table holds once each is written once."""
    first = _judge(entries).first
    return len(first), sum(invoice.quantity for invoice in first.values())


def check_export(tables: Tables, entries: list[Entry], *, complete: bool, summaries: bool = True) -> list[str]:
    """Every problem found in one variant's tables against the ledger it consumed; [] when exact.
    Without `summaries` (a variant that writes raw rows only: raw_ingest), the summaries must be empty."""
    judged = _judge(entries)
    problems = [f"generator label disagrees with the bytes: {label}" for label in judged.labels[:3]]
    if not judged.first:
        problems.append("the ledger holds no good message")
    written: Counter[uuid.UUID] = Counter(row.event_id for row in tables.rows)
    if twice := [str(event_id) for event_id, count in written.items() if count > 1]:
        problems.append(f"{len(twice)} event ids written more than once, e.g. {twice[:3]}")
    matched: list[Invoice] = []
    unexplained: list[str] = []
    for row in tables.rows:
        invoice = judged.good_at.get(row.coordinates)
        if invoice is None:
            unexplained.append(f"row at {row.coordinates} matches no good ledger message")
        elif not same_row(invoice, row.payload):
            unexplained.append(f"row at {row.coordinates} differs from its message: {row.payload}")
        else:
            matched.append(invoice)
    if unexplained:
        problems.append(f"{len(unexplained)} rows not explained exactly, e.g. {unexplained[:3]}")
    if complete:
        missing = [event_id for event_id in judged.first if event_id not in written]
        want = totals(judged.first.values())
    else:
        missing = _missing_in_prefix(judged, tables.rows, written)
        want = totals(matched)
        if not tables.rows:
            problems.append("no row written")
    if missing:
        problems.append(f"{len(missing)} good events not written, e.g. {[str(m) for m in missing[:3]]}")
    problems += _summary_differences(tables, want if summaries else totals([]))
    return problems


def _missing_in_prefix(judged: _Judged, rows: list[Row], written: Counter[uuid.UUID]) -> list[uuid.UUID]:
    """Good events at or before the last written offset of their partition, yet not written."""
    reached: dict[tuple[str, int], int] = {}
    for row in rows:
        reached[(row.topic, row.partition)] = max(reached.get((row.topic, row.partition), -1), row.offset)
    return [
        invoice.event_id
        for (topic, partition, offset), invoice in judged.good_at.items()
        if offset <= reached.get((topic, partition), -1) and invoice.event_id not in written
    ]


def _summary_differences(tables: Tables, want: Totals) -> list[str]:
    return differences_in("inventory", tables.inventory, want.inventory) + differences_in(
        "item_sales_daily", tables.daily, want.daily
    )


def differences_in(name: str, actual: Mapping[K, V], expected: Mapping[K, V]) -> list[str]:
    keys = sorted(set(actual) | set(expected), key=str)
    differ = [
        f"{key}: got {actual.get(key)} want {expected.get(key)}" for key in keys if actual.get(key) != expected.get(key)
    ]
    return [f"{name}: {len(differ)} of {len(keys)} rows differ, e.g. {differ[:3]}"] if differ else []


def check_variant(
    export: Path, directory: Path, *, complete: bool, from_memory: bool, summaries: bool = True
) -> list[str]:
    """Check DIR/<variant> against the ledger of the dataset its dataset.txt names. `from_memory`:
    the variant wrote records regenerated in memory (pg_ceiling, raw_ingest), listed in its
    records.jsonl with coordinates of their own; they must be exactly the dataset's acknowledged
    messages. `summaries`: see check_export."""
    dataset = (directory / "dataset.txt").read_text().strip()
    acknowledged = ledger(export, dataset)
    problems: list[str] = []
    consumed = acknowledged
    if from_memory:
        consumed = read_ledger([directory / "records.jsonl"])
        problems += same_messages(consumed, acknowledged)
    elif (directory / "records.jsonl").exists():
        problems.append("records.jsonl beside a variant that reads Kafka")
    return problems + check_export(read_tables(directory), consumed, complete=complete, summaries=summaries)
