"""T1 (kill -9 at every step, and at random) and T14 (SIGTERM in the middle of things)."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable

import pytest

from tests.support.chaos import REPORT, Stream, iterations
from tests.support.consumer_process import ConsumerProcess
from tests.support.services import wait_until

# Failpoints of the write path; each crash is a real os._exit(137) inside `microbatch run`.
CRASH_POINTS = ["after_consume", "mid_copy", "before_commit", "after_db_commit", "after_dlq_produce"]


def keep_fed(stream: Stream, seed: int) -> None:
    """Top the stream up when it is nearly drained, so every iteration has flushes to crash in."""
    if not stream.producing():
        stream.produce(3000, seed=seed, rate=3000, background=True)


def wait_for_exit(stream: Stream, consumer: ConsumerProcess, seed: int, timeout: float = 120) -> int | None:
    """The consumer's exit code once it exits, feeding the stream meanwhile; None (and killed) on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = consumer.wait(timeout=2)
        if code is not None:
            return code
        keep_fed(stream, seed)
    consumer.kill()
    return None


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_t1_kill_at_a_failpoint(stream: Stream, point: str) -> None:
    rng = random.Random(point)
    rounds = iterations(quick=1, full=20)
    stream.produce(4000, seed=1, rate=4000, background=True)
    crashes = 0
    for n in range(rounds):
        keep_fed(stream, seed=100 + n)
        # Static membership: the restarted process takes its predecessor's place at once.
        consumer = stream.consumer(
            MICROBATCH_FAILPOINTS=f"{point}:crash@{rng.randint(1, 3)}",
            MICROBATCH_KAFKA_CONFIG='{"group.instance.id": "chaos-1", "session.timeout.ms": "6000"}',
        )
        crashes += wait_for_exit(stream, consumer, seed=1000 + n) == 137
    final = stream.settled_consumer()
    recovery = stream.wait_caught_up()
    assert final.terminate() == 0
    verdict = stream.verdict()
    REPORT.add(f"T1 kill -9 at {point}", crashes, verdict, recovery)
    assert crashes == rounds, f"the failpoint {point} was not reached in every round ({crashes}/{rounds})"
    assert verdict.ok, verdict.details


def test_t1_kill_in_assign_and_in_revoke(stream: Stream) -> None:
    rounds = iterations(quick=1, full=20)
    stream.produce(3000, seed=2, rate=3000, background=True)
    crashes = 0
    for n in range(rounds):
        keep_fed(stream, seed=200 + n)
        point = "in_assign" if n % 2 == 0 else "in_revoke"
        consumer = stream.consumer(MICROBATCH_FAILPOINTS=f"{point}:crash@1")
        if point == "in_revoke":
            wait_until(_assigned(consumer), timeout=60, what="an assignment")
            stream.wait_progress()
            consumer.signal(signal.SIGTERM)  # leaving the group revokes: the crash lands in on_revoke
        crashes += wait_for_exit(stream, consumer, seed=2000 + n) == 137
    final = stream.settled_consumer()
    recovery = stream.wait_caught_up()
    assert final.terminate() == 0
    verdict = stream.verdict()
    REPORT.add("T1 kill -9 in assign / revoke", crashes, verdict, recovery)
    assert crashes == rounds
    assert verdict.ok, verdict.details


def _assigned(consumer: ConsumerProcess) -> Callable[[], bool]:
    return lambda: "assigned invoices" in consumer.output() or not consumer.running()


def test_t1_random_kill_loop_over_one_stream(stream: Stream) -> None:
    rng = random.Random(30)
    kills = iterations(quick=3, full=30)
    stream.produce(kills * 1500, seed=3, rate=2500, background=True)
    for n in range(kills):
        keep_fed(stream, seed=300 + n)
        consumer = stream.consumer(
            MICROBATCH_KAFKA_CONFIG='{"group.instance.id": "chaos-kill", "session.timeout.ms": "6000"}'
        )
        stream.wait_progress(timeout=90)
        # The fault schedule: a random instant shortly after the consumer started writing.
        time.sleep(rng.uniform(0.0, 1.5))
        consumer.kill()
    final = stream.settled_consumer()
    recovery = stream.wait_caught_up()
    assert final.terminate() == 0
    verdict = stream.verdict()
    REPORT.add("T1 random kill -9 loop", kills, verdict, recovery)
    assert verdict.ok, verdict.details


@pytest.mark.parametrize(
    ("where", "failpoint"),
    [
        ("during a flush", "before_commit:sleep:2000@2"),
        ("during a dead-letter produce", "after_dlq_produce:sleep:2000@1"),
    ],
)
def test_t14_sigterm_exits_within_the_deadline(stream: Stream, where: str, failpoint: str) -> None:
    stream.produce(5000, seed=4, rate=3000, background=True)
    consumer = stream.consumer(MICROBATCH_FAILPOINTS=failpoint)
    point = failpoint.split(":", maxsplit=1)[0]
    wait_until(lambda: f"failpoint {point}" in consumer.output(), timeout=90, what=f"the {point} failpoint")
    started = time.monotonic()
    code = consumer.terminate(timeout=30)
    took = time.monotonic() - started
    assert code == 0, consumer.output()[-2000:]
    assert took <= 10 + 5, f"exit took {took:.1f} s (shutdown_timeout_s = 10)"
    final = stream.settled_consumer()
    recovery = stream.wait_caught_up()
    assert final.terminate() == 0
    verdict = stream.verdict()
    REPORT.add(f"T14 SIGTERM {where}", 1, verdict, recovery, notes=f"exit 0 in {took:.1f} s")
    assert verdict.ok, verdict.details


def test_t14_sigterm_during_a_rebalance(stream: Stream) -> None:
    stream.produce(5000, seed=5, rate=3000, background=True)
    first = stream.consumer(MICROBATCH_FAILPOINTS="in_revoke:sleep:2000@1")
    stream.wait_progress()
    second = stream.consumer()  # joining moves partitions: the first one's revoke sleeps
    wait_until(lambda: "failpoint in_revoke" in first.output(), timeout=90, what="the revoke of the first consumer")
    started = time.monotonic()
    code = first.terminate(timeout=30)
    took = time.monotonic() - started
    assert code == 0, first.output()[-2000:]
    assert took <= 15
    recovery = stream.wait_caught_up()
    assert second.terminate() == 0
    verdict = stream.verdict()
    REPORT.add("T14 SIGTERM during a rebalance", 1, verdict, recovery, notes=f"exit 0 in {took:.1f} s")
    assert verdict.ok, verdict.details
