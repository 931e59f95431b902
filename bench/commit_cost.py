"""What a durable COMMIT costs on this machine: the most `durability = replay` can save per flush.

With synchronous_commit on (`durability = "fsync"`), COMMIT returns once the transaction's WAL is on
disk; with it off (`"replay"`) it returns at once and the WAL writer flushes a moment later. Replay
can therefore save at most the wait of the durable COMMIT, and no more: everything else in a flush
(COPY, the inserts, the upserts) is the same work either way. This measures that wait directly, on
the lab's PostgreSQL: transactions that write a window's worth of WAL (`rows` rows of
`wal_bytes_per_row`), committed with synchronous_commit on and off, interleaved, and only the COMMIT
timed. The share of a flush it represents is the bound on what replay can buy in throughput.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg

# A heap insert's WAL record without its payload, in bytes (header, tuple header, block reference):
# the payload is sized so that a row writes about the WAL an event of the measured write path does.
ROW_OVERHEAD = 80


def commit_wait(url: str, *, rows: int, wal_bytes_per_row: float, rounds: int = 7) -> dict[str, Any]:
    """Median seconds of the COMMIT alone, with synchronous_commit on and off (see the module docstring)."""
    payload = max(1, round(wal_bytes_per_row) - ROW_OVERHEAD)
    waits: dict[str, list[float]] = {"on": [], "off": []}
    wal: list[int] = []
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE commit_probe (id bigint PRIMARY KEY, payload text NOT NULL)")
        conn.commit()
        for n in range(rounds * 2):
            setting = "on" if n % 2 == 0 else "off"
            conn.execute("SET synchronous_commit = on" if setting == "on" else "SET synchronous_commit = off")
            conn.commit()
            before = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
            conn.execute(
                "INSERT INTO commit_probe SELECT %s + g, repeat('x', %s) FROM generate_series(1, %s) AS g",
                (n * rows, payload, rows),
            )
            written = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)", (before[0] if before else "0/0",)
            ).fetchone()
            started = time.perf_counter()
            conn.commit()
            waits[setting].append(time.perf_counter() - started)
            wal.append(int(written[0]) if written else 0)
        conn.execute("DROP TABLE commit_probe")
        conn.commit()
    return {
        "rows_per_transaction": rows,
        "wal_bytes_per_transaction": int(statistics.median(wal)),
        "fsync_commit_s": round(statistics.median(waits["on"]), 5),
        "replay_commit_s": round(statistics.median(waits["off"]), 5),
        "rounds": rounds,
    }


def most_replay_saves(commit: dict[str, Any], flush_p50_s: float | None) -> float | None:
    """The share of a flush (at its p50) that replay can save at most: the durable COMMIT's extra wait."""
    if not flush_p50_s or not commit:
        return None
    saved = float(commit["fsync_commit_s"]) - float(commit["replay_commit_s"])
    return round(max(0.0, saved) / flush_p50_s, 3)
