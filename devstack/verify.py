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


def dead_letters_by_reason(bootstrap: str, topic: str, timeout: float = 60.0) -> dict[str, int]:
    """Count the messages of a dead-letter topic by their `dlq.reason` header (empty if no topic)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "microbatch-dlq-probe", "enable.auto.commit": False}
    )
    counts: dict[str, int] = {}
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return counts
        ends = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                partition, offset = message.partition() or 0, message.offset() or 0
                if message.error() is not None or partition not in ends or offset >= ends[partition]:
                    continue
                if offset + 1 >= ends[partition]:
                    del ends[partition]
                reason = _header(message.headers(), "dlq.reason")
                counts[reason] = counts.get(reason, 0) + 1
    finally:
        consumer.close()
    return counts


def _header(headers: object, name: str) -> str:
    pairs = headers.items() if isinstance(headers, dict) else headers or []
    for key, value in pairs:  # type: ignore[attr-defined]
        if key == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return "?"


def caught_up(database_url: str, group: str, bootstrap: str, topic: str, partitions: int) -> bool:
    """True when every non-empty partition's stored position equals its high watermark."""
    stored = stored_positions(database_url, group)
    return all(
        stored.get(pid, 0) == high for pid, high in high_watermarks(bootstrap, topic, partitions).items() if high > 0
    )
