"""T17: the database crashes while the consumer commits with synchronous_commit off (durability = replay)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import psycopg
import pytest

from devstack.postgres_server import PostgresServer
from tests.chaos.conftest import StreamFactory
from tests.support.chaos import Scenario, iterations
from tests.support.services import wait_until


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return found


def kill_postgres(server: PostgresServer) -> None:
    """SIGKILL the postmaster and every process it started (each is a process group of its own), as an
    out-of-memory kill or a power cut would: nothing is written on the way down, so WAL still in shared
    memory (commits made with synchronous_commit off) is lost. Returns once all of them are gone
    (reaped), so that the server can start again."""
    pid = int((server.datadir / "postmaster.pid").read_text().split()[0])
    victims = [pid, *_children(pid)]
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not any(Path(f"/proc/{v}").exists() for v in victims), timeout=30,
               what="the killed PostgreSQL processes to be reaped")  # fmt: skip


@pytest.mark.scenario("T17 PostgreSQL crashes with durability = replay (synchronous_commit off)")
def test_t17_database_crashes_with_durability_replay_lose_nothing(
    make_stream: StreamFactory, own_durable_postgres: PostgresServer, scenario: Scenario
) -> None:
    """The server keeps its durable defaults; the consumer commits its flushes with synchronous_commit off.
    Each crash may lose the last commits (rows and positions together); the consumer must notice and read
    those messages again. Half the crashes are `pg_ctl stop -m immediate`, half a SIGKILL of the server."""
    server = own_durable_postgres
    stream = make_stream(database=server.url)
    rounds = iterations(quick=1, full=5)
    stream.produce(4000 + rounds * 4000, seed=27, rate=2500, background=True)
    consumer = stream.consumer(MICROBATCH_DURABILITY="replay")
    for n in range(rounds):
        for crash in (lambda: server.stop("immediate"), lambda: kill_postgres(server)):
            stream.wait_progress()
            stream.ensure_load(seed=270 + n)
            stream.inject(crash)
            server.start()
    stream.recover()
    # Then a crash right after the last writes, with nothing more to read: no write will notice what the
    # crash took; the consumer must look at its positions again once it reconnects (its idle ping). The
    # background processes that write WAL out (the WAL writer; the background writer and the checkpointer,
    # which flush it before writing a page) are stopped first, so that those commits are still in
    # PostgreSQL's memory when it dies (as in a power cut: written to the OS is as good as on disk when
    # only the processes die).
    lost = 0
    for attempt in range(5):  # bounded: a crash whose commits were flushed after all is tried again
        wait_until(stream.caught_up, timeout=120, what="the consumer to catch up before the quiet crash")
        with psycopg.connect(server.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT backend_type, pid FROM pg_stat_activity "
                "WHERE backend_type IN ('walwriter', 'background writer', 'checkpointer')"
            ).fetchall()
        assert {str(kind) for kind, _ in rows} == {"walwriter", "background writer", "checkpointer"}, rows
        for _, pid in rows:
            os.kill(int(pid), signal.SIGSTOP)
        stream.produce(300, seed=279 + attempt)
        wait_until(stream.caught_up, timeout=60, what="the last 300 events to be written")
        kill_postgres(server)
        server.start()
        lost = stream.backlog()
        scenario.notes.append(f"a crash once caught up took back {lost} written message(s)")
        if lost > 0:
            break
    assert lost > 0, "five quiet crashes lost no commit: the WAL was flushed before each"
    wait_until(stream.caught_up, timeout=120, what="what the quiet crash took back to be written again")
    assert consumer.terminate() == 0
    stream.verdict(copies_allowed=1 + scenario.faults)
    log = consumer.output()
    reread = log.count("the database lost commits") + log.count("fenced: stored position moved")
    scenario.notes.append(f"consumer found its stored positions behind and read again {reread} time(s)")
    # The quiet crash above took back written messages (lost > 0): the consumer can only have written them
    # again by finding its stored positions behind its own, which it logs.
    assert reread > 0, "commits were lost, yet the consumer never found its stored positions behind"
    scenario.check(min_faults=2 * rounds)
