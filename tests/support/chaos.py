"""The fault-injection harness: one stream (topic, database, ledger) per scenario, consumers as real
processes, faults that must hit live work, recovery measured from the end of the last fault, and the
report `make chaos` writes from the outcomes (tests/chaos/conftest.py)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from psycopg import sql

from consumer.produce import ensure_topic
from devstack.verify import Read, caught_up, high_watermarks, stored_positions
from pipeline.spec import PipelineSpec
from pipeline.spec_loader import builtin_dir, load_pipeline
from tests.support.consumer_process import MICROBATCH, ConsumerProcess, run_cli
from tests.support.invoice_rules import DEFAULT_MAX_MESSAGE_BYTES, Invoice
from tests.support.oracle import INVOICES, Contract, Entry, Verdict, check, read_ledger
from tests.support.services import wait_until
from tests.support.vendor_oracle import VENDOR_INVOICES

FULL = os.environ.get("MICROBATCH_CHAOS") == "full"
RECOVERY_BOUND_S = 60.0
LOAD_GAP_S = 15.0  # how long a fault waits for work in hand (Stream.inject): a new producer starts in seconds
INJECT_SEEDS = 9_000_000  # seeds of the productions inject starts; the scenarios' own are far below


def iterations(quick: int, full: int) -> int:
    return full if FULL else quick


@dataclass
class Scenario:
    """One scenario's figures, filled in by the test; the report row is written after its outcome."""

    name: str
    faults: int = 0
    live_faults: int = 0
    verdict: Verdict | None = None
    recovery_s: float | None = None
    recovery_from: str = "the end of the last fault"
    bound_s: float = RECOVERY_BOUND_S
    notes: list[str] = field(default_factory=list)

    def fault(self, *, live: bool) -> None:
        """Count one injected fault; `live` when it hit work in progress (not an idle consumer)."""
        self.faults += 1
        self.live_faults += bool(live)

    def check(self, *, min_faults: int = 1) -> None:
        """The assertions every scenario makes: the oracle, every fault on live work, recovery in bound."""
        assert self.verdict is not None, "the scenario has no verdict"
        assert self.verdict.ok, self.verdict.details
        assert self.faults >= min_faults, f"{self.faults} faults injected, expected at least {min_faults}"
        assert self.live_faults == self.faults, (
            f"only {self.live_faults} of {self.faults} faults hit live work (a flush, a buffered window)"
        )
        assert self.recovery_s is not None, "recovery was not measured"
        assert self.recovery_s <= self.bound_s, (
            f"recovery took {self.recovery_s:.1f} s from {self.recovery_from} (bound {self.bound_s:.0f} s)"
        )


# Windows small enough that every scenario flushes often (more chances for each fault to land).
CHAOS_ENV = {
    "MICROBATCH_MAX_RECORDS": "1000",
    "MICROBATCH_MAX_WAIT_MS": "200",
    "MICROBATCH_SHUTDOWN_TIMEOUT_S": "10",
    "MICROBATCH_HALTED_RETRY_S": "1",
    "MICROBATCH_LOG_LEVEL": os.environ.get("CHAOS_LOG_LEVEL", "INFO"),
    "MICROBATCH_RETRY_MAX_MS": "2000",
    "MICROBATCH_LOCK_TIMEOUT_MS": "3000",
    "MICROBATCH_IDLE_IN_TRANSACTION_TIMEOUT_MS": "5000",
    "MICROBATCH_DEAD_LETTER_TIMEOUT_S": "4",  # below the idle-in-transaction timeout, as the settings demand
}


# The built-in pipelines a stream can run, with the contract the oracle checks them against; their
# events come from `microbatch produce --pipeline <file>`, which picks the generator by the name.
CONTRACTS: dict[str, Contract[Any]] = {"invoices": INVOICES, "vendor-invoices": VENDOR_INVOICES}


def own_pipeline(name: str, unique: str, directory: Path) -> Path:
    """The built-in pipeline `name` with a test's own topic (`<name>-<unique>`), dead-letter topic
    (`<topic>.dlq`) and group (`group-<unique>`), written to `directory`."""
    text = (builtin_dir() / f"{name}.toml").read_text()
    topic = f"{name}-{unique}"
    for key, value in (
        ("topics", f'["{topic}"]'),
        ("group", f'"group-{unique}"'),
        ("dead_letter_topic", f'"{topic}.dlq"'),
    ):
        text, found = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.MULTILINE)
        assert found == 1, f"the built-in {name}.toml has no top-level {key} line"
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


@dataclass
class Stream:
    """One scenario's topic, dead-letter topic, group, database, ledger and consumers; the names are
    its pipeline file's, and the oracle checks the tables against that pipeline's `contract`."""

    name: str
    env: dict[str, str]
    pipeline: Path
    workdir: Path
    bootstrap: str
    database_url: str
    start_consumer: Callable[..., ConsumerProcess]
    scenario: Scenario
    partitions: int = 4
    ledgers: list[Path] = field(default_factory=list)
    producers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    consumers: list[ConsumerProcess] = field(default_factory=list)
    fault_ended_at: float | None = None
    backlog_at_fault_end: dict[tuple[str, int], int] = field(default_factory=dict)
    # Offsets the broker deleted before they were read (retention): they are not in the promise.
    deleted: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    exact_recovery: bool = False  # recovered means stored == the high watermark (a re-created topic)
    extra_entries: list[Entry] = field(default_factory=list)  # messages produced by the test itself
    earlier_dead_letters: list[Read] = field(default_factory=list)  # what a deleted dead-letter topic held
    contract: Contract[Any] = INVOICES
    top_ups: int = 0  # productions started by `inject` to put work in hand (seeds of their own)

    @cached_property
    def spec(self) -> PipelineSpec:
        return load_pipeline(self.pipeline)

    @property
    def topic(self) -> str:
        return self.spec.topics[0]

    @property
    def dead_letter_topic(self) -> str:
        return self.spec.dead_letter_topic or f"{self.topic}.dlq"

    @property
    def group(self) -> str:
        return self.spec.group

    @property
    def max_message_bytes(self) -> int:
        return int(self.env.get("MICROBATCH_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES))

    def prepare(self) -> Stream:
        result = run_cli(self.env, "init-db", "--pipeline", str(self.pipeline))
        assert result.returncode == 0, result.stderr
        ensure_topic(AdminClient({"bootstrap.servers": self.bootstrap}), self.topic, self.partitions)
        return self

    # -- load ------------------------------------------------------------------------------------

    def produce(
        self, count: int, *, seed: int, rate: float | None = None, bad_ratio: float = 0.02,
        duplicate_ratio: float = 0.01, background: bool = False,
    ) -> None:  # fmt: skip
        """Produce the pipeline's events (recorded in a new ledger file); in the background or to completion."""
        ledger = self.workdir / f"ledger-{len(self.ledgers)}.jsonl"
        self.ledgers.append(ledger)
        argv = [str(MICROBATCH), "produce", "--pipeline", str(self.pipeline), "--count", str(count),
                "--partitions", str(self.partitions), "--seed", str(seed), "--bad-ratio", str(bad_ratio),
                "--duplicate-ratio", str(duplicate_ratio), "--ledger", str(ledger)]  # fmt: skip
        if rate:
            argv += ["--rate", str(rate)]
        process = subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.producers.append(process)
        if not background:
            self.wait_produced()

    def producing(self) -> bool:
        return any(p.poll() is None for p in self.producers)

    def wait_produced(self, timeout: float = 300) -> None:
        for process in self.producers:
            _, stderr = process.communicate(timeout=timeout)
            assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]

    def keep_fed(self, seed: int, count: int = 3000, rate: float = 3000, bad_ratio: float = 0.02) -> None:
        """Top the stream up when production has ended, so that the next fault finds work to hit."""
        if not self.producing():
            self.produce(count, seed=seed, rate=rate, bad_ratio=bad_ratio, background=True)

    def top_up(self, bad_ratio: float = 0.02) -> None:
        """Produce more with a seed of its own (INJECT_SEEDS and up), unless a production is running."""
        self.top_ups += 1
        self.keep_fed(seed=INJECT_SEEDS + self.top_ups, bad_ratio=bad_ratio)

    def ensure_load(self, seed: int) -> None:
        """Before a fault: a producer is running and the consumer has unwritten messages in hand."""
        self.keep_fed(seed)
        topped_up = 0

        def loaded() -> bool:
            # A producer that ends just after keep_fed saw it running leaves nothing in hand: top up again
            # (a seed of its own each time, so that no event repeats an earlier one).
            nonlocal topped_up
            if not self.producing():
                topped_up += 1
                self.keep_fed(seed * 1000 + topped_up)
            return self.under_load()

        try:
            wait_until(loaded, timeout=30, what=f"{self.name} to be under load", interval=0.05)
        except AssertionError as timed_out:
            last = self.producers[-1]
            state = "running" if last.poll() is None else f"exited {last.returncode}"
            stderr = "" if last.poll() is None or last.stderr is None else last.stderr.read().decode(errors="replace")
            found = f"backlog {self.backlog()}, last producer {state}: {stderr[-1500:]}"
            raise AssertionError(f"{timed_out}; {found}") from None

    # -- consumers -------------------------------------------------------------------------------

    def consumer(self, **extra_env: str) -> ConsumerProcess:
        process = self.start_consumer({**self.env, **extra_env}, self.pipeline)
        self.consumers.append(process)
        return process

    def settled_consumer(self, **extra_env: str) -> ConsumerProcess:
        """A consumer that has joined the group (so a SIGTERM reaches its handler, not a half-started process)."""
        consumer = self.consumer(**extra_env)
        wait_until(lambda: "assigned " in consumer.output() or not consumer.running(), timeout=90,
                   what="the consumer to join its group")  # fmt: skip
        return consumer

    def duplicates_skipped(self) -> int | None:
        """Producer duplicates the consumers skipped, from each one's last words (None: one did not
        shut down cleanly, so its count is unknown)."""
        total = 0
        for consumer in self.consumers:
            found = consumer.final_counts()
            if found is None:
                return None
            total += found["duplicates skipped"]
        return total

    # -- progress and faults ---------------------------------------------------------------------

    def rows(self) -> int:
        try:
            with psycopg.connect(self.database_url) as conn:
                query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self.spec.raw.table))
                row = conn.execute(query).fetchone()
        except psycopg.Error:
            return -1
        return int(row[0]) if row else 0

    def backlog(self) -> int:
        """Messages acknowledged by the broker but not yet written (or dead-lettered); -1 when unknown."""
        try:
            high = high_watermarks(self.bootstrap, self.topic, self.partitions)
            stored = stored_positions(self.database_url, self.group)
        except (psycopg.Error, KafkaException):
            return -1
        return sum(max(0, mark - stored.get(pid, 0)) for pid, mark in high.items())

    def under_load(self) -> bool:
        """True when the consumer has work in hand now: unwritten messages it is buffering or flushing."""
        return self.backlog() > 0

    def load_in_hand(self) -> bool:
        """Just before a fault: whether the consumer has unwritten work in hand. A consumer that caught up
        since `ensure_load` (a fast one, or the production just ended) gets up to LOAD_GAP_S for new work to
        arrive, produced here when none is, so that the fault hits work in hand."""
        deadline = time.monotonic() + LOAD_GAP_S
        # True on the first probe that sees work in hand, and the fault follows at once: probing again
        # would judge a later instant (a consumer that keeps up may have written that work by then).
        while not self.under_load():
            if time.monotonic() >= deadline:
                return False
            if not self.producing():  # the production ended and the consumer caught up: more work
                self.top_up()
            time.sleep(0.005)
        return True

    def inject(self, action: Callable[[], object], *, live: bool | None = None) -> None:
        """Inject one instantaneous fault: counted as live when the stream was under load just before
        (`load_in_hand`), or as `live` says."""
        hit = self.load_in_hand() if live is None else live
        action()
        self.scenario.fault(live=hit)
        self.fault_ended()

    def fault_ended(self) -> None:
        """Mark the end of the latest fault: recovery is measured from here, to this backlog."""
        self.fault_ended_at = time.monotonic()
        deadline = time.monotonic() + 60
        while True:
            try:
                self.backlog_at_fault_end = high_watermarks(self.bootstrap, self.topic, self.partitions)
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def wait_progress(self, timeout: float = 60) -> None:
        """Until more rows are written than now: the consumer is doing work. A consumer that already wrote
        everything produced (the production ended before a fault it then recovered from) has no work to
        progress on: more is produced here, as `load_in_hand` does, so the wait is for the consumer alone.
        Those events are all valid: a scenario that waits for progress before it breaks the dead-letter
        path (T16) has produced nothing to dead-letter yet, and must not be given any."""
        before = self.rows()

        def progressed() -> bool:
            if self.rows() > before:
                return True
            if not self.producing() and self.backlog() == 0:
                self.top_up(bad_ratio=0)
            return False

        try:
            wait_until(progressed, timeout=timeout, what=f"{self.name} to make progress", interval=0.1)
        except AssertionError as timed_out:  # what the consumer had to do: the first question when it did not
            state = "running" if self.producing() else "ended"
            logs = ", ".join(str(consumer.log) for consumer in self.consumers)
            found = f"rows {self.rows()} (from {before}), backlog {self.backlog()}, production {state}, logs {logs}"
            raise AssertionError(f"{timed_out}; {found}") from None

    def caught_up(self) -> bool:
        try:
            return not self.producing() and caught_up(
                self.database_url, self.group, self.bootstrap, self.topic, self.partitions
            )
        except (psycopg.Error, KafkaException):  # a service being restarted by the scenario
            return False

    def recovered(self) -> bool:
        """True when everything acknowledged before the last fault ended has been written."""
        try:
            stored = stored_positions(self.database_url, self.group)
        except psycopg.Error:
            return False
        if self.exact_recovery:  # the stored positions may still be the old incarnation's, beyond the end
            return all(stored.get(pid, 0) == mark for pid, mark in self.backlog_at_fault_end.items() if mark > 0)
        return all(stored.get(pid, 0) >= mark for pid, mark in self.backlog_at_fault_end.items() if mark > 0)

    def recover(self, timeout: float = 180) -> float:
        """Wait until recovered and then caught up; records and returns the recovery time (I5): from
        the end of the last fault to the moment the backlog of that instant was written."""
        assert self.fault_ended_at is not None, "no fault was injected"
        wait_until(self.recovered, timeout=timeout, what=f"{self.name} to recover", interval=0.1)
        recovery = time.monotonic() - self.fault_ended_at
        self.scenario.recovery_s = recovery
        self.wait_produced()
        wait_until(self.caught_up, timeout=timeout, what=f"{self.name} to catch up", interval=0.25)
        return recovery

    # -- the oracle ------------------------------------------------------------------------------

    def ledger(self) -> list[Entry]:
        """Every acknowledged message, but those the broker deleted before they were read."""
        entries = read_ledger(self.ledgers) + self.extra_entries
        if not self.deleted:
            return entries

        def survived(entry: Entry) -> bool:
            first, end = self.deleted.get((entry["topic"], entry["partition"]), (0, 0))
            return not first <= entry["offset"] < end

        return [entry for entry in entries if survived(entry)]

    def verdict(
        self, rejected_by_database: Callable[[Invoice], bool] = lambda invoice: False, *, copies_allowed: int = 1
    ) -> Verdict:
        found = check(self.ledger(), self.database_url, self.bootstrap, self.topic, self.dead_letter_topic,
                      self.group, self.partitions, max_message_bytes=self.max_message_bytes,
                      rejected_by_database=rejected_by_database, dead_letter_copies_allowed=copies_allowed,
                      earlier_dead_letters=self.earlier_dead_letters, contract=self.contract)  # fmt: skip
        self.scenario.verdict = found
        return found

    def close(self) -> None:
        for process in self.producers:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=30)  # reaps it and closes its pipe
