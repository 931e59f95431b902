"""What the benchmark reads from the machine: CPU time and memory of processes (/proc), WAL volume,
histogram quantiles from a consumer's /metrics, the versions of what ran. Linux only."""

from __future__ import annotations

import os
import platform
import subprocess
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import confluent_kafka
import orjson
import psycopg
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from bench.lab import Lab

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU seconds of `pid` (0 when it is gone); with `reaped_children`, plus those of
    its children that exited and were waited for (cutime, cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):  # gone, or exiting (ProcessLookupError) while being read
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS


def children(pid: int) -> list[int]:
    """Direct children of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):  # a backend that exited meanwhile
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its children, live or exited (PostgreSQL: the postmaster and its backends).

    A backend whose connection closed before the second reading still counts: the postmaster
    reaped it, which adds its CPU time to the postmaster's cutime and cstime.
    """
    return cpu_seconds(pid, reaped_children=True) + sum(cpu_seconds(child) for child in children(pid))


def peak_rss_bytes(pid: int) -> int:
    """The high-water mark of resident memory (VmHWM) of `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def wal_bytes(database_url: str) -> int:
    """The current WAL position in bytes: the difference of two readings is the WAL written between them."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()
    return int(row[0]) if row else 0


@dataclass
class CpuClock:
    """CPU seconds of the consumer, PostgreSQL and the broker, read together."""

    consumer: float
    postgres: float
    broker: float

    @classmethod
    def read(cls, consumer: int | None, postmaster: int, broker: int) -> CpuClock:
        return cls(cpu_seconds(consumer) if consumer else 0.0, tree_cpu_seconds(postmaster), cpu_seconds(broker))

    def per_event_us(self, later: CpuClock, events: int) -> dict[str, float]:
        """CPU microseconds per event spent by each, between this reading and `later`."""
        scale = 1e6 / max(events, 1)
        return {
            "consumer": round((later.consumer - self.consumer) * scale, 2),
            "postgres": round((later.postgres - self.postgres) * scale, 2),
            "broker": round((later.broker - self.broker) * scale, 2),
        }


def histogram_quantiles(port: int, name: str, quantiles: tuple[float, ...] = (0.5, 0.99)) -> list[float | None]:
    """Quantiles of a Prometheus histogram scraped from 127.0.0.1:`port`, as histogram_quantile() computes them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        if family.name == name:
            # Written windows only (outcome ok or bisected), summed per bound across those outcomes.
            sums: dict[float, float] = {}
            for s in family.samples:
                if s.name.endswith("_bucket") and s.labels.get("outcome", "ok") != "failed":
                    sums[float(s.labels["le"])] = sums.get(float(s.labels["le"]), 0.0) + s.value
            buckets = list(sums.items())
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return [None for _ in quantiles]
    total = buckets[-1][1]
    results: list[float | None] = []
    for q in quantiles:
        rank, previous_bound, previous_count = q * total, 0.0, 0.0
        value = buckets[-2][0] if len(buckets) > 1 else None
        for bound, count in buckets:
            if count >= rank:
                if bound == float("inf"):
                    value = previous_bound
                else:
                    span = count - previous_count
                    value = previous_bound + (bound - previous_bound) * ((rank - previous_count) / span if span else 0)
                break
            previous_bound, previous_count = bound, count
        results.append(value)
    return results


def machine() -> dict[str, object]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = next(
        (
            int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_bytes": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def source(root: Path) -> dict[str, object]:
    """The commit the benchmark runs on, and whether tracked files differed from it when it started."""

    def git(*args: str) -> str:
        found = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return found.stdout.strip() if found.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def versions(lab: Lab, quix_python: Path | None) -> dict[str, str]:
    with psycopg.connect(lab.postgres.admin_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    found = {
        "kafka": lab.kafka.version(),
        "postgresql": str(row[0]) if row else "unknown",
        "librdkafka": confluent_kafka.libversion()[0],
        "confluent_kafka": metadata.version("confluent-kafka"),
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__})",
        "orjson": orjson.__version__,
    }
    if quix_python is not None:
        result = subprocess.run(
            [str(quix_python), "-c", "import quixstreams; print(quixstreams.__version__)"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        found["quixstreams"] = result.stdout.strip() or "unknown"
    return found
