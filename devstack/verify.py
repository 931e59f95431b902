"""Compare the invoice pipeline's tables with the generator's expected totals (used by demo and tests)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumer.deadletter import header_dict
from consumer.messages import normalize_headers


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
    rows, distinct = (int(counts[0]), int(counts[1])) if counts else (0, 0)
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
        Check(
            "transactions rows", rows == expected["transactions"], f"{rows} rows, expected {expected['transactions']}"
        ),
        Check("no event written twice", distinct == rows, f"{rows - distinct} duplicate event ids"),
        Check("inventory", got_inventory == want_inventory, _diff(got_inventory, want_inventory)),
        Check("item_sales_daily", got_daily == want_daily, _diff(got_daily, want_daily)),
    ]


def _diff(got: dict[str, Any], want: dict[str, Any]) -> str:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    changed = [key for key in sorted(set(got) & set(want)) if got[key] != want[key]]
    if not (missing or extra or changed):
        return f"{len(got)} rows equal"
    sample = [f"{key}: got {got[key]} want {want[key]}" for key in changed[:3]]
    return f"{len(missing)} missing {missing[:3]}, {len(extra)} unexpected {extra[:3]}, {len(changed)} differ {sample}"


def high_watermarks(bootstrap: str, topic: str, partitions: int) -> dict[tuple[str, int], int]:
    """The next offset to be written in each partition (what a caught-up consumer has stored)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "microbatch-watermark-probe"})
    try:
        return {
            (topic, p): consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


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


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Read]:
    """Every message currently in `topic` (empty when it does not exist)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return []
        ends = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        out: list[Read] = []
        deadline = time.monotonic() + timeout
        while sum(ends.values()) and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error() is not None:
                    continue
                partition, offset = message.partition() or 0, message.offset() or 0
                if partition in ends and offset < ends[partition]:
                    raw = normalize_headers(message.headers())
                    out.append(Read(partition, offset, message.key(), message.value(), header_dict(raw), raw))
                    if offset + 1 >= ends[partition]:
                        ends[partition] = 0
        return out
    finally:
        consumer.close()


def dead_letters_by_reason(bootstrap: str, topic: str, timeout: float = 60.0) -> dict[str, int]:
    """Count the messages of a dead-letter topic by their `dlq.reason` header (empty if no topic)."""
    counts: dict[str, int] = {}
    for letter in read_topic(bootstrap, topic, timeout=timeout):
        reason = letter.headers.get("dlq.reason", "?")
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def caught_up(database_url: str, group: str, bootstrap: str, topic: str, partitions: int) -> bool:
    """True when every non-empty partition's stored position equals its high watermark."""
    stored = stored_positions(database_url, group)
    return all(
        stored.get(pid, 0) == high for pid, high in high_watermarks(bootstrap, topic, partitions).items() if high > 0
    )
