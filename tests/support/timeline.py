"""What a failed end-to-end test prints besides the oracle's verdict: each consumer's decisions about
positions (from its log) and the audit rows of the position events, so that a loss or a duplicate
seen once in CI can be traced to the consumer, the partition and the moment it happened."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition

# Log lines about ownership and positions, and every warning or error.
NOTABLE = re.compile(
    r"WARNING|ERROR|CRITICAL|assigned|revoked|lost |positioned|fenced|halted|stored positions|shut down|received SIG"
)
MAX_LINES_PER_LOG = 40


def timeline(logs_dir: Path, database_url: str, bootstrap: str, topic: str, partitions: int) -> str:
    """The notable lines of every `consumer-*.log` under `logs_dir`, the position events table, and the
    topic's log bounds (a log start above 0 means the broker deleted records: not the consumer's doing)."""
    parts = [f"--- {topic}: (log start, high watermark) {_bounds(bootstrap, topic, partitions)}"]
    for log in sorted(logs_dir.glob("consumer-*.log")):
        lines = [line[:300] for line in log.read_text(errors="replace").splitlines() if NOTABLE.search(line)]
        if len(lines) > MAX_LINES_PER_LOG:
            lines = [*lines[: MAX_LINES_PER_LOG // 2], "…", *lines[-MAX_LINES_PER_LOG // 2 :]]
        parts.append(f"--- {log.name}\n" + "\n".join(lines))
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT at, topic, partition, kind, old_position, new_position, detail "
                "FROM microbatch_position_events ORDER BY at, id"
            ).fetchall()
        parts.append("--- microbatch_position_events\n" + "\n".join(" ".join(map(str, row)) for row in rows))
    except psycopg.Error as exc:
        parts.append(f"--- microbatch_position_events: not readable ({exc})")
    return "\n".join(parts)


def _bounds(bootstrap: str, topic: str, partitions: int) -> dict[int, tuple[int, int]] | str:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "microbatch-timeline-probe"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in range(partitions)}
    except KafkaException as exc:
        return f"not readable ({exc})"
    finally:
        consumer.close()
