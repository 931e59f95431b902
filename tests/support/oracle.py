"""The oracle of RELIABILITY.md: checks I1-I4 from the producer's ledger, the tables and the dead letters.

The ledger lists every message the broker acknowledged (topic, partition, offset, event id, good or
bad, and the values that feed the summaries). After the fault ends and the consumer caught up:
  I1 no loss: every good event is in the raw table; every bad message is in the dead-letter topic;
  I2 no duplicates: no event id twice in the raw table; no good message in the dead-letter topic;
  I3 exact aggregates: every summary row equals the sum over the good ledger events;
  I4 positions: every stored position equals its partition's high watermark.
(I5, recovery time, is measured by each scenario.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg

from devstack.verify import high_watermarks, read_topic, stored_positions

Entry = dict[str, Any]


def read_ledger(paths: Iterable[Path]) -> list[Entry]:
    entries: list[Entry] = []
    for path in paths:
        if path.exists():
            entries += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return entries


@dataclass
class Verdict:
    """What the oracle found; `ok` when every invariant holds."""

    events: int = 0
    good: int = 0
    bad: int = 0
    lost: int = 0
    duplicated: int = 0
    aggregate_mismatches: int = 0
    positions_ok: bool = True
    dead_letters: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.aggregate_mismatches == 0 and self.positions_ok


def check(
    ledger: list[Entry],
    database_url: str,
    bootstrap: str,
    topic: str,
    dead_letter_topic: str,
    group: str,
    partitions: int,
    *,
    rejected_by_database: Callable[[Entry], bool] = lambda entry: False,
) -> Verdict:
    """Apply I1-I4. `rejected_by_database` marks good-looking events a table constraint refuses."""
    verdict = Verdict(events=len(ledger))
    good: dict[str, Entry] = {}
    bad_coordinates: set[tuple[int, int]] = set()
    good_coordinates: set[tuple[int, int]] = set()
    for entry in ledger:
        coordinates = (entry["partition"], entry["offset"])
        if entry["good"] and not rejected_by_database(entry):
            good.setdefault(entry["event_id"], entry)
            good_coordinates.add(coordinates)
        else:
            bad_coordinates.add(coordinates)
    verdict.good, verdict.bad = len(good), len(bad_coordinates)

    with psycopg.connect(database_url) as conn:
        ids = [str(row[0]) for row in conn.execute("SELECT event_id FROM transactions").fetchall()]
        inventory = {
            str(r[0]): (int(r[1]), r[2]) for r in conn.execute("SELECT item_id, quantity, last_event_at FROM inventory")
        }
        daily = {
            (str(r[0]), r[1].isoformat()): (int(r[2]), Decimal(r[3]), int(r[4]))
            for r in conn.execute("SELECT item_id, day, units, revenue, lines FROM item_sales_daily")
        }
    written = set(ids)
    missing = set(good) - written
    verdict.lost += len(missing)
    verdict.duplicated += (len(ids) - len(written)) + len(written - set(good))
    if missing:
        where: dict[int, list[int]] = {}
        for event_id in missing:
            where.setdefault(good[event_id]["partition"], []).append(good[event_id]["offset"])
        spans = {p: (min(o), max(o), len(o)) for p, o in sorted(where.items())}
        verdict.details.append(
            f"I1: {len(missing)} good events not written; per partition (first, last, count): {spans}"
        )
    if written - set(good):
        verdict.details.append(f"I2: {len(written - set(good))} rows that no good ledger event explains")

    dead = read_topic(bootstrap, dead_letter_topic, timeout=120)
    verdict.dead_letters = len(dead)
    dead_coordinates = {
        (int(d.headers["dlq.original.partition"]), int(d.headers["dlq.original.offset"]))
        for d in dead
        if d.headers.get("dlq.original.topic") == topic
    }
    not_dead = bad_coordinates - dead_coordinates
    verdict.lost += len(not_dead)
    if not_dead:
        verdict.details.append(f"I1: {len(not_dead)} bad messages not dead-lettered, e.g. {sorted(not_dead)[:3]}")
    wrongly_dead = dead_coordinates & good_coordinates
    verdict.duplicated += len(wrongly_dead)
    if wrongly_dead:
        verdict.details.append(f"I2: {len(wrongly_dead)} good messages in the dead-letter topic")

    want_inventory, want_daily = _expected(good.values())
    mismatched = _differences(inventory, want_inventory) + _differences(daily, want_daily)
    verdict.aggregate_mismatches = len(mismatched)
    if mismatched:
        verdict.details.append(f"I3: {len(mismatched)} summary rows differ, e.g. {mismatched[:3]}")

    stored = stored_positions(database_url, group)
    high = high_watermarks(bootstrap, topic, partitions)
    behind = {pid: (stored.get(pid, 0), mark) for pid, mark in high.items() if mark > 0 and stored.get(pid, 0) != mark}
    verdict.positions_ok = not behind
    if behind:
        verdict.details.append(f"I4: stored positions differ from high watermarks: {behind}")
    return verdict


def _expected(events: Iterable[Entry]) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    inventory: dict[str, Any] = {}
    daily: dict[tuple[str, str], Any] = {}
    for event in events:
        moment = datetime.fromisoformat(event["ts"])
        quantity, price = int(event["quantity"]), Decimal(event["price"])
        item = event["item"]
        qty, last = inventory.get(item, (0, moment))
        inventory[item] = (qty + quantity, max(last, moment))
        key = (item, moment.astimezone(UTC).date().isoformat())
        units, revenue, lines = daily.get(key, (0, Decimal(0), 0))
        daily[key] = (units + quantity, revenue + quantity * price, lines + 1)
    return inventory, daily


def _differences(actual: dict[Any, Any], expected: dict[Any, Any]) -> list[str]:
    keys = set(actual) | set(expected)
    return [f"{key}: got {actual.get(key)} want {expected.get(key)}" for key in sorted(keys, key=str)
            if actual.get(key) != expected.get(key)]  # fmt: skip
