"""Small steps the user-path tests share: topics, row counts, init-db."""

from __future__ import annotations

from pathlib import Path
from typing import LiteralString

import psycopg
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tests.support.consumer_process import run_cli
from tests.support.services import wait_until


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(timeout=30)
    wait_until(lambda: topic in admin.list_topics(timeout=10).topics, timeout=30, what=f"topic {topic} to exist")


def delete_topics(bootstrap: str, *topics: str) -> None:
    """Delete the topics that exist and wait until the broker no longer lists them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = [topic for topic in topics if topic in admin.list_topics(timeout=10).topics]
    for future in admin.delete_topics(existing).values() if existing else ():
        future.result(timeout=30)
    wait_until(
        lambda: not set(topics) & set(admin.list_topics(timeout=10).topics),
        timeout=60,
        what=f"topics {topics} to be deleted",
    )


def count_rows(database_url: str, query: LiteralString) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def init_db(env: dict[str, str], pipeline: Path) -> None:
    result = run_cli(env, "init-db", "--pipeline", str(pipeline))
    assert result.returncode == 0, result.stdout + result.stderr
