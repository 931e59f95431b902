"""Shared steps of the lookup integration tests: topics, producing vendor lines, waiting, exact totals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from psycopg import sql

from devstack.verify import caught_up
from tests.support.consumer_process import ConsumerProcess
from tests.support.dead_letters import create_topic, init_db
from tests.support.kafka_io import Sent, produce_exact
from tests.support.services import KafkaService
from tests.support.vendor_events import (
    Expected,
    Line,
    Mappings,
    daily_by_key,
    inventory_by_key,
    mappings,
    transaction_keys,
)

PARTITIONS = 2
TRANSIENT = "flush failed (transient)"


# -- helpers ------------------------------------------------------------------------------------------


def topic_of(unique: str) -> str:
    return f"vendors-{unique}"


def prepare(
    env: dict[str, str], pipeline: Path, kafka: KafkaService, unique: str, partitions: int = PARTITIONS
) -> None:
    init_db(env, pipeline)
    create_topic(kafka.bootstrap, topic_of(unique), partitions)


def produce(kafka: KafkaService, unique: str, lines: list[Line], partition_of: list[int]) -> list[Sent]:
    messages: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = [
        (line.invoice_id.encode(), line.value(), None) for line in lines
    ]
    return produce_exact(kafka.bootstrap, topic_of(unique), messages, partition_of=partition_of)


def drained(kafka: KafkaService, database_url: str, unique: str, partitions: int = PARTITIONS) -> Callable[[], bool]:
    topic = topic_of(unique)
    return lambda: caught_up(database_url, f"group-{unique}", kafka.bootstrap, topic, partitions)


def rows(database_url: str, table: str = "transactions") -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def assert_exact(database_url: str, expected: Expected) -> Mappings:
    """Rows, summaries and reference tables exactly as the expected events make them, by natural key."""
    assert rows(database_url) == len(expected.events)
    assert transaction_keys(database_url) == {event_id: line.key for event_id, line in expected.events.items()}
    assert inventory_by_key(database_url) == expected.inventory()
    assert daily_by_key(database_url) == expected.daily()
    found = mappings(database_url)
    assert (found.items, found.distinct_items) == (len(expected.keys), len(expected.keys)), found
    assert (found.vendors, found.distinct_vendors) == (len(expected.vendors), len(expected.vendors)), found
    assert (found.orphan_items, found.orphan_vendors, found.inconsistent_rows, found.unnormalised) == (0, 0, 0, 0), (
        found
    )
    return found


def transient_failures(*processes: ConsumerProcess) -> list[str]:
    return [line for process in processes for line in process.output().splitlines() if TRANSIENT in line]


def deadlocks(database_url: str) -> int:
    """Deadlocks PostgreSQL detected in this test's database (its statistics, flushed when backends end)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def members(kafka: KafkaService, unique: str) -> list[int]:
    """Partitions assigned to each member of this test's group, sorted."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    try:
        group = admin.describe_consumer_groups([f"group-{unique}"])[f"group-{unique}"].result(timeout=10)
    except KafkaException as error:  # a fresh broker's group coordinator may still be loading: ask again
        if error.args[0].retriable() or error.args[0].code() == KafkaError.COORDINATOR_LOAD_IN_PROGRESS:
            return []
        raise
    return sorted(len(member.assignment.topic_partitions) for member in group.members)


def register(conn: psycopg.Connection[tuple[Any, ...]], *names: str) -> dict[str, int]:
    """Vendors registered beforehand (for find-only lookups): name → vendor_id."""
    for name in names:
        conn.execute("INSERT INTO vendors (name) VALUES (%s)", (name,))
    return vendor_ids(conn)


def vendor_ids(conn: psycopg.Connection[tuple[Any, ...]]) -> dict[str, int]:
    return {str(name): int(vendor_id) for name, vendor_id in conn.execute("SELECT name, vendor_id FROM vendors")}


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected {old!r} once in the pipeline file"
    return text.replace(old, new)


# -- 1. concurrent find-or-create ---------------------------------------------------------------------


def vendor_lines_pipeline(tmp_path: Path, unique: str, *, summary_key: str) -> Path:
    """One find-only lookup with on_missing = "null": raw rows keep the event, with a NULL vendor id."""
    path = tmp_path / "vendor-lines.toml"
    path.write_text(f"""
name = "vendor-lines"
topics = ["{topic_of(unique)}"]
group = "group-{unique}"
dead_letter_topic = "{topic_of(unique)}.dlq"

[fields]
event_id = {{ type = "uuid" }}
vendor_name = {{ type = "string", path = "vendor", min_length = 1, max_length = 64 }}
quantity = {{ type = "integer", min = -1000000, max = 1000000, nonzero = true }}
ts = {{ type = "timestamp" }}

[[lookups]]
name = "vendor"
table = "vendors"
key = {{ name = "vendor_name" }}
id = "vendor_id"
create = false
on_missing = "null"
normalize = ["trim", "lower"]

[raw]
table = "vendor_lines"
dedupe_key = ["event_id"]

[raw.columns]
event_id = "event_id"
vendor_id = "vendor"
vendor = "vendor.name"
spelled = "vendor_name"
quantity = "quantity"
occurred_at = "ts"

[[summaries]]
table = "daily_quantity"
key = {summary_key}
aggregates.quantity = {{ sum = "quantity" }}
aggregates.lines = {{ count = true }}
""")
    return path
