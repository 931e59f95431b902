"""Compare the example pipelines' tables with their generators' expected totals (used by demo and tests).

The invoice tables are keyed by the item id the events carry. The vendor-invoice tables are keyed
by surrogate ids the lookups assign while the consumer runs, so their rows are compared by natural
key ("vendor|sku", as stored: normalised), read through inventory → items → vendors.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from consumer.deadletter import header_dict
from pipeline.records import read_headers


@dataclass(frozen=True)
class Check:
    """One verified fact: what, whether it holds, and the difference when it does not."""

    name: str
    ok: bool
    detail: str


def load_expected(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def compare_totals(database_url: str, expected: dict[str, Any]) -> list[Check]:
    """Raw row count, uniqueness, and every summary row against the expected totals, exactly."""
    with psycopg.connect(database_url) as conn:
        counts = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM transactions").fetchone()
        inventory = conn.execute("SELECT item_id, quantity, last_event_at FROM inventory").fetchall()
        daily = conn.execute("SELECT item_id, day, units, revenue, lines FROM item_sales_daily").fetchall()
    return [*transaction_checks(counts, expected), *_summary_checks(inventory, daily, expected)]


def transaction_checks(counts: tuple[Any, ...] | None, expected: dict[str, Any]) -> list[Check]:
    """`counts` = (rows, distinct event ids) of `transactions`."""
    rows, distinct = (int(counts[0]), int(counts[1])) if counts else (0, 0)
    return [
        Check(
            "transactions rows", rows == expected["transactions"], f"{rows} rows, expected {expected['transactions']}"
        ),
        Check("no event written twice", distinct == rows, f"{rows - distinct} duplicate event ids"),
    ]


def _summary_checks(inventory: list[Any], daily: list[Any], expected: dict[str, Any]) -> list[Check]:
    """Rows of (item, quantity, last_event_at) and (item, day, units, revenue, lines) against the
    expected totals; a key read twice (two rows for one natural key) is a difference too."""
    got_inventory = {str(item): (int(qty), last) for item, qty, last in inventory}
    want_inventory = {
        item: (v["quantity"], datetime.fromisoformat(v["last_event_at"])) for item, v in expected["inventory"].items()
    }
    got_daily = {
        f"{item}|{day.isoformat()}": (int(units), Decimal(revenue), int(lines))
        for item, day, units, revenue, lines in daily
    }
    want_daily = {
        key: (v["units"], Decimal(v["revenue"]), v["lines"]) for key, v in expected["item_sales_daily"].items()
    }
    return [
        _equal("inventory", got_inventory, want_inventory, len(inventory)),
        _equal("item_sales_daily", got_daily, want_daily, len(daily)),
    ]


def _equal(name: str, got: dict[str, Any], want: dict[str, Any], rows: int) -> Check:
    if rows != len(got):
        return Check(name, False, f"{rows - len(got)} rows repeat a key; {_diff(got, want)}")
    return Check(name, got == want, _diff(got, want))


# Summary rows named by natural key; LEFT JOINs, so that a row whose item or vendor is missing shows
# up as an unexpected key ("?|?") instead of vanishing from the comparison.
_INVENTORY_BY_KEY = """
    SELECT coalesce(v.name, '?') || '|' || coalesce(i.sku, '?'), s.quantity, s.last_event_at
    FROM inventory s
    LEFT JOIN items i ON i.item_id = s.item_id LEFT JOIN vendors v ON v.vendor_id = i.vendor_id"""
_DAILY_BY_KEY = """
    SELECT coalesce(v.name, '?') || '|' || coalesce(i.sku, '?'), s.day, s.units, s.revenue, s.lines
    FROM item_sales_daily s
    LEFT JOIN items i ON i.item_id = s.item_id LEFT JOIN vendors v ON v.vendor_id = i.vendor_id"""
# (rows, distinct natural keys, normalised keys) of each reference table.
_VENDOR_KEYS = """
    SELECT count(*), count(DISTINCT name), count(*) FILTER (WHERE name = lower(btrim(name, E' \\t\\r\\n')))
    FROM vendors"""
_ITEM_KEYS = """
    SELECT count(*), count(DISTINCT (vendor_id, sku)), count(*) FILTER (WHERE sku = lower(btrim(sku, E' \\t\\r\\n')))
    FROM items"""
# Every reference row is used and every use has its row: items without their vendor or without a
# transaction, vendors without items, transactions whose ids or SKU disagree with their item's.
_ORPHANS = """
    SELECT
      (SELECT count(*) FROM items i WHERE NOT EXISTS (SELECT FROM vendors v WHERE v.vendor_id = i.vendor_id)),
      (SELECT count(*) FROM items i WHERE NOT EXISTS (SELECT FROM transactions t WHERE t.item_id = i.item_id)),
      (SELECT count(*) FROM vendors v WHERE NOT EXISTS (SELECT FROM items i WHERE i.vendor_id = v.vendor_id)),
      (SELECT count(*) FROM transactions t LEFT JOIN items i ON i.item_id = t.item_id
        WHERE i.item_id IS NULL OR i.vendor_id IS DISTINCT FROM t.vendor_id OR i.sku IS DISTINCT FROM t.sku)"""


def compare_vendor_totals(database_url: str, expected: dict[str, Any]) -> list[Check]:
    """The vendor-invoices tables against `consumer.vendor_workload`'s expected totals: transactions as
    for invoices; inventory and item_sales_daily per natural key; `items` and `vendors` hold each
    expected key exactly once, normalised, and nothing is orphaned (see _ORPHANS)."""
    with psycopg.connect(database_url) as conn:
        counts = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM transactions").fetchone()
        inventory = conn.execute(_INVENTORY_BY_KEY).fetchall()
        daily = conn.execute(_DAILY_BY_KEY).fetchall()
        vendors = conn.execute(_VENDOR_KEYS).fetchone()
        items = conn.execute(_ITEM_KEYS).fetchone()
        orphans = conn.execute(_ORPHANS).fetchone()
    return [
        *transaction_checks(counts, expected),
        *_summary_checks(inventory, daily, expected),
        _reference_check("vendors", vendors, expected["vendors"]),
        _reference_check("items", items, expected["items"]),
        _orphan_check(orphans),
    ]


def _reference_check(table: str, counts: tuple[Any, ...] | None, want: int) -> Check:
    """`counts` = (rows, distinct natural keys, normalised keys) of a reference table."""
    rows, distinct, normalised = (int(n) for n in counts) if counts else (0, 0, 0)
    detail = f"{rows} rows, expected {want}"
    if distinct != rows or normalised != rows:
        detail += f"; {rows - distinct} keys created twice, {rows - normalised} not normalised"
    return Check(f"{table} rows, each key once", rows == want == distinct == normalised, detail)


def _orphan_check(counts: tuple[Any, ...] | None) -> Check:
    names = ("items without vendor", "items unused", "vendors unused", "transactions not matching their item")
    wrong = {name: int(n) for name, n in zip(names, counts or (-1,) * len(names), strict=True) if n}
    return Check("no orphaned references", not wrong, str(wrong) if wrong else "none")


def _diff(got: dict[str, Any], want: dict[str, Any]) -> str:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    changed = [key for key in sorted(set(got) & set(want)) if got[key] != want[key]]
    if not (missing or extra or changed):
        return f"{len(got)} rows equal"
    sample = [f"{key}: got {got[key]} want {want[key]}" for key in changed[:3]]
    return f"{len(missing)} missing {missing[:3]}, {len(extra)} unexpected {extra[:3]}, {len(changed)} differ {sample}"


_LEADER_NOT_READY = frozenset(
    {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError._TIMED_OUT, KafkaError._TRANSPORT}
)


def high_watermarks(
    bootstrap: str, topic: str, partitions: int, *, timeout: float = 30.0
) -> dict[tuple[str, int], int]:
    """The next offset to be written in each partition (what a caught-up consumer has stored).

    A retriable broker answer (a leader not elected yet, as just after a broker restart or thaw) is
    asked again until `timeout` seconds have passed; then, or on any other error, KafkaException.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "microbatch-watermark-probe"})
    try:
        return {(topic, p): _high_watermark(consumer, TopicPartition(topic, p), timeout) for p in range(partitions)}
    finally:
        consumer.close()


def _high_watermark(consumer: Consumer, tp: TopicPartition, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(consumer.get_watermark_offsets(tp, timeout=10)[1])
        except KafkaException as exc:
            # The binding builds this error without librdkafka's retriable flag, so the codes are named.
            error = exc.args[0] if exc.args else None
            transient = isinstance(error, KafkaError) and error.code() in _LEADER_NOT_READY
            if not transient or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def stored_positions(database_url: str, group: str, table: str = "microbatch_offsets") -> dict[tuple[str, int], int]:
    """Positions stored by `group`; empty when the offsets table does not exist yet."""
    query = psycopg.sql.SQL("SELECT topic, partition, next_offset FROM {} WHERE consumer_group = %s").format(
        psycopg.sql.Identifier(table)
    )
    try:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(query, (group,)).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return {(str(t), int(p)): int(o) for t, p, o in rows}


@dataclass(frozen=True)
class Read:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    raw_headers: tuple[tuple[str, bytes | None], ...]


class IncompleteRead(RuntimeError):
    """A topic could not be read to the end it had when the read began."""


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Read]:
    """Every message currently in `topic` (empty when it does not exist).

    Raises IncompleteRead rather than return part of the topic: when the broker answers its
    metadata with another error than "unknown topic" (or does not answer), or when `timeout` passes before every
    partition was read up to the high watermark it had when the read began. A caller counting what
    is in the topic (dead letters, their copies) must never count a cut read."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False})
    try:
        ends = _partition_ends(consumer, topic)
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        out: list[Read] = []
        deadline = time.monotonic() + timeout
        while sum(ends.values()) and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error() is not None:
                    continue
                partition, offset = message.partition() or 0, message.offset() or 0
                if partition in ends and offset < ends[partition]:
                    raw = read_headers(message.headers) or ()  # names that are not UTF-8: none
                    out.append(Read(partition, offset, message.key(), message.value(), header_dict(raw), raw))
                    if offset + 1 >= ends[partition]:
                        ends[partition] = 0
        if unread := sorted(partition for partition, end in ends.items() if end):
            raise IncompleteRead(f"{topic}: partitions {unread} not read to their end within {timeout} s")
        return out
    finally:
        consumer.close()


def _partition_ends(consumer: Consumer, topic: str) -> dict[int, int]:
    """Each non-empty partition of `topic` → its high watermark (empty: no such topic). Raises
    IncompleteRead when the broker answers with an error or does not answer."""
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None:
            return {}
        if metadata.error is not None:
            if metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return {}
            raise IncompleteRead(f"{topic}: the broker's metadata answer is an error: {metadata.error}")
        ends = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
    except KafkaException as error:  # no answer about the topic or its bounds: nothing read is complete
        raise IncompleteRead(f"{topic}: the broker did not say what the topic holds: {error}") from error
    return ends


def dead_letters_by_reason(bootstrap: str, topic: str, timeout: float = 60.0) -> dict[str, int]:
    """Count the messages of a dead-letter topic by their `dlq.reason` header (empty if no topic)."""
    counts: dict[str, int] = {}
    for letter in read_topic(bootstrap, topic, timeout=timeout):
        reason = letter.headers.get("dlq.reason", "?")
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def caught_up(database_url: str, group: str, bootstrap: str, topic: str, partitions: int) -> bool:
    """True when every non-empty partition's stored position equals its high watermark.

    False, not an error, while the broker cannot say where a partition ends: just after a restart or
    a thaw its metadata may not know the partition yet ("Unknown partition"), and a caller polling
    this under a deadline should simply ask again.
    """
    stored = stored_positions(database_url, group)
    try:
        ends = high_watermarks(bootstrap, topic, partitions)
    except KafkaException:
        return False
    return all(stored.get(pid, 0) == high for pid, high in ends.items() if high > 0)
