"""T1 (kill -9 at every step, and at random; T1L with lookups in the flush) and T14 (SIGTERM in the middle
of things)."""

from __future__ import annotations

import random
import re
import signal
import time
from collections.abc import Callable

import psycopg
import pytest

from tests.support.chaos import FULL, Scenario, Stream, iterations
from tests.support.consumer_process import ConsumerProcess
from tests.support.invoice_rules import Invoice
from tests.support.services import wait_until

StreamFactory = Callable[..., Stream]

# Failpoints of the write path; each crash is a real os._exit(137) inside `microbatch run`.
CRASH_POINTS = ["after_consume", "mid_copy", "before_commit", "after_db_commit", "after_dlq_produce"]
# The points where a crash can cut a flush between its dead-letter produce and its COMMIT, leaving
# copies whose positions did not move: the restarted consumer sends them again. Decoding's rejections
# are produced at the end of the COPY (pipeline/writer.py, send_ahead), the database's at step 5: so
# after_lookups, after_dlq_produce and before_commit, and after_consume: the loop thread consumes while
# the writer thread writes the window before (overlap_writes), so that kill can land inside it. The
# other points are on the writer thread, which writes one window at a time: at mid_copy (between the
# COPY's two halves) nothing was sent yet, as these streams have no row the database refuses (a window
# bisected in a second transaction would have sent its rejections in the first); after the COMMIT
# (after_db_commit) the positions are past those messages. A crash there re-sends nothing.
RESENDING_POINTS = frozenset({"after_consume", "after_lookups", "after_dlq_produce", "before_commit"})
# Without a crash in between: a flush whose dead letters were acknowledged in part (the others timed
# out, DeadLetterUnavailable) is retried and sends only the others; a crash anywhere in the retry then
# leaves the acknowledged ones to be sent again by the next consumer. Such a flush logs this.
# DeadLetterUnavailable's words ("3 of 7 dead letters not acknowledged by T"), not DeadLetterRefused's.
UNACKNOWLEDGED = re.compile(r"\d+ of \d+ dead letters not acknowledged by")
EXIT_KILLED = 137
SHUTDOWN_TIMEOUT_S = 10  # CHAOS_ENV's MICROBATCH_SHUTDOWN_TIMEOUT_S
# A process that must exit within its shutdown timeout gets this much more for starting Python and
# leaving the group on two cores shared with the broker, PostgreSQL and the suite.
EXIT_SLACK_S = 10


def wait_for_exit(stream: Stream, consumer: ConsumerProcess, seed: int, timeout: float = 120) -> int | None:
    """The consumer's exit code once it exits, feeding the stream meanwhile; None (and killed) on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = consumer.wait(timeout=2)
        if code is not None:
            return code
        stream.keep_fed(seed)
    consumer.kill()
    return None


def crash_rounds(stream: Stream, point: str, rounds: int, seed: int, *, at: Callable[[int], int]) -> int:
    """`rounds` consumers, each crashing (exit 137) at the `at(n)`-th hit of `point`; each crash is a
    fault, live by construction (the failpoint sits inside work in progress). Returns how many of them
    had a flush retried after some of its dead letters went unacknowledged (RESENDING_POINTS)."""
    retried = 0
    for n in range(rounds):
        stream.keep_fed(seed=seed + n)
        # Static membership: the restarted process takes its predecessor's place at once.
        consumer = stream.consumer(
            MICROBATCH_FAILPOINTS=f"{point}:crash@{at(n)}",
            MICROBATCH_KAFKA_CONFIG='{"group.instance.id": "chaos-1", "session.timeout.ms": "6000"}',
        )
        if point == "in_revoke":
            wait_until(_assigned(consumer), timeout=60, what="an assignment")
            stream.ensure_load(seed=seed + 500 + n)  # a stream that ended meanwhile is fed again
            stream.wait_progress()
            consumer.signal(signal.SIGTERM)  # leaving the group revokes: the crash lands in on_revoke
        code = wait_for_exit(stream, consumer, seed=seed + 1000 + n)
        fired = code == EXIT_KILLED and f"failpoint {point}" in consumer.output()
        assert fired, f"round {n}: the failpoint {point} did not crash the consumer (exit {code})"
        retried += UNACKNOWLEDGED.search(consumer.output()) is not None
        stream.scenario.fault(live=fired)
        stream.fault_ended()
    return retried


def _copies_allowed(points: tuple[str, ...], rounds: int, retried: int) -> int:
    """The most copies of one dead letter `rounds` crashes at each of `points` can leave: one more per
    crash between a produce and its COMMIT (RESENDING_POINTS), and per crashed consumer whose flush
    was retried after a partial delivery (`retried`, from crash_rounds)."""
    return 1 + rounds * sum(point in RESENDING_POINTS for point in points) + retried


@pytest.mark.scenario("T1 kill -9 at {point}")
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_t1_kill_at_a_failpoint(stream: Stream, scenario: Scenario, point: str) -> None:
    rng = random.Random(point)
    rounds = iterations(quick=1, full=20)
    stream.produce(4000, seed=1, rate=4000, background=True)
    retried = crash_rounds(stream, point, rounds, seed=100, at=lambda n: rng.randint(1, 3))
    final = stream.settled_consumer()
    stream.recover()
    assert final.terminate() == 0
    stream.verdict(copies_allowed=_copies_allowed((point,), rounds, retried))
    scenario.check(min_faults=rounds)


# The write path of a pipeline with lookups: their find-or-create statements run in the flush
# transaction, between the COPY and the flush statement (after_lookups).
LOOKUP_CRASH_POINTS = [*CRASH_POINTS[:2], "after_lookups", *CRASH_POINTS[2:]]
# Full mode: a scenario per point, 20 crashes each (as T1). Quick mode (`make test`): one scenario that
# crashes once at each point in turn, on one stream.
LOOKUP_SCENARIOS = (
    {point: (point,) for point in LOOKUP_CRASH_POINTS}
    if FULL
    else {"each write-path failpoint": tuple(LOOKUP_CRASH_POINTS)}
)


@pytest.mark.scenario("T1L kill -9 at {where} with lookups")
@pytest.mark.parametrize("where", list(LOOKUP_SCENARIOS))
def test_t1l_kill_at_a_failpoint_with_lookups(make_stream: StreamFactory, scenario: Scenario, where: str) -> None:
    """The vendor-invoices pipeline (vendors → items, found or created in the flush, names normalised)
    fed by its generator: every good event written once with its item's normalised key, the summaries
    exact per natural key, the bad ones dead-lettered, and `items`/`vendors` one row per distinct key of
    the written events (none created twice, none orphaned by a crash)."""
    points = LOOKUP_SCENARIOS[where]
    rng = random.Random(where)
    rounds = iterations(quick=1, full=20)
    stream = make_stream(pipeline="vendor-invoices")
    stream.produce(4000, seed=11, rate=4000, background=True)
    retried = 0
    for index, point in enumerate(points):
        retried += crash_rounds(stream, point, rounds, seed=1100 + 100 * index, at=lambda n: rng.randint(1, 3))
    final = stream.settled_consumer()
    stream.recover()
    assert final.terminate() == 0
    verdict = stream.verdict(copies_allowed=_copies_allowed(points, rounds, retried))
    references = verdict.references
    scenario.notes.append(
        f"{references.get('items', 0):,} items and {references.get('vendors', 0)} vendors, one per distinct "
        f"normalised key of the written events ({verdict.reference_mismatches} created twice, orphaned or missing)"
    )
    scenario.check(min_faults=rounds * len(points))


# A failure storm: the database refuses one event in 16 (its event id starts with "a"). Windows then
# take many transactions: bisection under small budgets, then slices of max_savepoints rows, each
# committing its resolved prefix and dead-lettering its refused rows before its COMMIT.
STORM_CHECK = "CHECK (left(event_id::text, 1) <> 'a')"
STORM_ENV = {
    "MICROBATCH_MAX_SAVEPOINTS": "16",
    "MICROBATCH_MAX_BISECT_TRANSACTIONS": "2",
    "MICROBATCH_LOG_LEVEL": "INFO",  # the "bisection isolated" lines show that the storm happened
}
_TRANSACTIONS = re.compile(r"bisection isolated \d+ rejected row\(s\) .* (\d+) transaction\(s\)")


def _refused_in_the_storm(invoice: Invoice) -> bool:
    """STORM_CHECK, for the oracle: PostgreSQL's `event_id::text` is the UUID's lowercase text."""
    return str(invoice.event_id).startswith("a")


@pytest.mark.scenario("T1S kill -9 at before_commit in a failure storm")
def test_t1s_kill_between_the_commits_of_a_failure_storm(stream: Stream, scenario: Scenario) -> None:
    """Each consumer crashes before its n-th COMMIT (n from 2 to 40). A storm window takes dozens of
    transactions (up to 62 each in the report of record), so most crashes land between two COMMITs of one
    window: what its earlier transactions committed stays written once, the rest is read again. Which
    crashes did is not observed (a window that does not finish logs nothing); that flushes went on in
    slices is asserted."""
    with psycopg.connect(stream.database_url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE transactions ADD CONSTRAINT storm {STORM_CHECK}")
    stream.env.update(STORM_ENV)
    rng = random.Random("storm")
    rounds = iterations(quick=2, full=12)
    stream.produce(4000, seed=71, rate=3000, background=True)
    crash_rounds(stream, "before_commit", rounds, seed=700, at=lambda n: rng.randint(2, 40))
    final = stream.settled_consumer()
    stream.recover()
    assert final.terminate() == 0
    stream.verdict(rejected_by_database=_refused_in_the_storm, copies_allowed=1 + rounds)
    per_flush = [int(n) for c in stream.consumers for n in _TRANSACTIONS.findall(c.output())]
    assert per_flush, "no flush isolated a refused row: the storm did not happen"
    sliced = sum(1 for n in per_flush if n > int(STORM_ENV["MICROBATCH_MAX_BISECT_TRANSACTIONS"]))
    scenario.notes.append(
        f"{len(per_flush)} completed flushes isolated refused rows, in up to {max(per_flush)} transactions each; "
        f"{sliced} went on in slices of max_savepoints rows"
    )
    assert sliced, f"no flush went past its bisection transactions into slices: {per_flush}"
    scenario.check(min_faults=rounds)


@pytest.mark.scenario("T1 kill -9 in assign and in revoke")
def test_t1_kill_in_assign_and_in_revoke(stream: Stream, scenario: Scenario) -> None:
    rounds = iterations(quick=1, full=10)
    stream.produce(3000, seed=2, rate=3000, background=True)
    for n in range(rounds):  # quick mode crashes once in each callback
        crash_rounds(stream, "in_assign", 1, seed=200 + 2 * n, at=lambda n: 1)
        crash_rounds(stream, "in_revoke", 1, seed=201 + 2 * n, at=lambda n: 1)
    final = stream.settled_consumer()
    stream.recover()
    assert final.terminate() == 0
    stream.verdict(copies_allowed=1 + 2 * rounds)
    scenario.check(min_faults=2 * rounds)
    assert "failpoint in_revoke" in " ".join(c.output() for c in stream.consumers)


def _assigned(consumer: ConsumerProcess) -> Callable[[], bool]:
    return lambda: "assigned invoices" in consumer.output() or not consumer.running()


@pytest.mark.scenario("T1 random kill -9 loop")
def test_t1_random_kill_loop_over_one_stream(stream: Stream, scenario: Scenario) -> None:
    rng = random.Random(30)
    kills = iterations(quick=3, full=30)
    stream.produce(kills * 1500, seed=3, rate=2500, background=True)
    for n in range(kills):
        stream.keep_fed(seed=300 + n)
        consumer = stream.consumer(
            MICROBATCH_KAFKA_CONFIG='{"group.instance.id": "chaos-kill", "session.timeout.ms": "6000"}'
        )
        stream.wait_progress(timeout=90)
        # The fault schedule: a random instant shortly after the consumer started writing.
        time.sleep(rng.uniform(0.0, 1.5))
        stream.ensure_load(seed=400 + n)
        stream.inject(consumer.kill)
    final = stream.settled_consumer()
    stream.recover()
    assert final.terminate() == 0
    stream.verdict(copies_allowed=1 + kills)
    scenario.check(min_faults=kills)


@pytest.mark.scenario("T14 SIGTERM {where}")
@pytest.mark.parametrize(
    ("where", "failpoint"),
    [
        ("during a flush", "before_commit:sleep:2000@2"),
        ("during a dead-letter produce", "after_dlq_produce:sleep:2000@1"),
    ],
)
def test_t14_sigterm_exits_within_the_deadline(stream: Stream, scenario: Scenario, where: str, failpoint: str) -> None:
    stream.produce(5000, seed=4, rate=3000, background=True)
    consumer = stream.consumer(MICROBATCH_FAILPOINTS=failpoint)
    point = failpoint.split(":", maxsplit=1)[0]
    wait_until(lambda: f"failpoint {point}" in consumer.output(), timeout=90, what=f"the {point} failpoint")
    started = time.monotonic()
    code = consumer.terminate(timeout=60)
    took = time.monotonic() - started
    scenario.fault(live=True)  # the failpoint holds the consumer inside the flush
    stream.fault_ended()
    scenario.notes.append(f"exit {code} in {took:.1f} s")
    assert code == 0, consumer.output()[-2000:]
    assert took <= SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S, f"exit took {took:.1f} s (shutdown_timeout_s = 10)"
    final = stream.settled_consumer()
    stream.recover()
    assert final.terminate() == 0
    verdict = stream.verdict()
    scenario.check()
    assert stream.duplicates_skipped() == verdict.ledger_duplicates


@pytest.mark.scenario("T14 SIGTERM during a rebalance")
def test_t14_sigterm_during_a_rebalance(stream: Stream, scenario: Scenario) -> None:
    stream.produce(5000, seed=5, rate=3000, background=True)
    first = stream.consumer(MICROBATCH_FAILPOINTS="in_revoke:sleep:2000@1")
    stream.wait_progress()
    second = stream.consumer()  # joining moves partitions: the first one's revoke sleeps
    wait_until(lambda: "failpoint in_revoke" in first.output(), timeout=90, what="the revoke of the first consumer")
    stream.ensure_load(seed=6)
    live = stream.under_load()
    started = time.monotonic()
    code = first.terminate(timeout=60)
    took = time.monotonic() - started
    scenario.fault(live=live)
    stream.fault_ended()
    scenario.notes.append(f"exit {code} in {took:.1f} s")
    assert code == 0, first.output()[-2000:]
    assert took <= SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S
    stream.recover()
    assert second.terminate() == 0
    verdict = stream.verdict()
    scenario.check()
    assert stream.duplicates_skipped() == verdict.ledger_duplicates
