"""`[[lookups]]` under concurrency and crashes: two consumers creating the same new keys, and SIGKILL
mid-stream, against real Kafka and PostgreSQL (the rest of the lookup tests: test_lookups.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from devstack.verify import read_topic
from tests.support.consumer_process import ConsumerProcess
from tests.support.lookup_runs import (
    PARTITIONS,
    assert_exact,
    deadlocks,
    drained,
    members,
    prepare,
    produce,
    rows,
    topic_of,
    transient_failures,
)
from tests.support.services import KafkaService, wait_until
from tests.support.vendor_events import (
    Expected,
    Line,
    LineMaker,
    mappings,
    natural_key_is_unique,
    universe,
    vendor_pipeline,
)


def test_two_consumers_creating_the_same_new_keys_create_each_once_retrying_at_most_twice(
    kafka: KafkaService, database_url: str, service_env: dict[str, str],
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    """Both partitions carry the same 320 new (vendor, sku) keys, spelled differently, at the same
    positions: every window of 200 events brings 40 keys not seen before, so the two consumers' windows
    create overlapping keys at the same time. Failpoints make them meet: the first consumer holds its
    first two transactions open for 800 ms after creating their keys (after the lookups, then before the
    COMMIT), while the second starts 300 ms later, so that its first windows find the first one's vendors
    and items uncommitted; after that, half of the second one's transactions are held 200 ms, at random."""
    pipeline = vendor_pipeline(tmp_path, unique)
    prepare(service_env, pipeline, kafka, unique)
    env = {**service_env, "MICROBATCH_MAX_RECORDS": "200"}
    first = consumer_factory(
        {**env, "MICROBATCH_FAILPOINTS": "after_lookups:sleep:800@1,before_commit:sleep:800@2"}, pipeline
    )
    second = consumer_factory(
        {**env, "MICROBATCH_FAILPOINTS": "after_consume:sleep:300@1,before_commit:sleep:200%0.5"}, pipeline
    )
    wait_until(lambda: members(kafka, unique) == [1, 1], timeout=60, what="both consumers to own one partition each")

    rng, maker = random.Random(101), LineMaker(seed=102)
    keys = rng.sample(universe(8, 40), 8 * 40)
    lines: list[Line] = []
    partition_of: list[int] = []
    for n in range(5 * len(keys)):
        # Every fifth event brings the next new key, the others repeat keys already seen.
        vendor, sku = keys[n // 5] if n % 5 == 0 else keys[rng.randrange(n // 5 + 1)]
        for partition in range(PARTITIONS):
            lines.append(maker.spelled(vendor, sku))
            partition_of.append(partition)
    # Producer duplicates: the same message again, later, in the same partition.
    for index in sorted(rng.sample(range(len(lines) // 2), 40)):
        lines.append(lines[index])
        partition_of.append(partition_of[index])
    produce(kafka, unique, lines, partition_of)
    expected = Expected()
    expected.add(lines)
    assert len(expected.keys) == len(keys) and len(expected.events) == len(lines) - 40

    wait_until(drained(kafka, database_url, unique), timeout=150, what="both consumers to catch up")
    assert first.terminate() == 0, first.output()[-3000:]
    assert second.terminate() == 0, second.output()[-3000:]

    found = assert_exact(database_url, expected)
    assert natural_key_is_unique(database_url, "items", ["vendor_id", "sku"])
    assert natural_key_is_unique(database_url, "vendors", ["name"])
    counts = [process.final_counts() for process in (first, second)]
    assert all(c is not None and c["rows written"] > 0 for c in counts), f"both consumers must write: {counts}"
    assert sum(c["rows written"] for c in counts if c) == len(expected.events)

    retries = transient_failures(first, second)
    detected = deadlocks(database_url)
    contended = found.vendor_ids_unused + found.item_ids_unused
    print(f"keys one writer waited for while the other created them: {found.vendor_ids_unused} vendors, "
          f"{found.item_ids_unused} items; transient retries: {len(retries)}; deadlocks: {detected}")  # fmt: skip
    for line in retries:
        print("  retried:", line)
    # The test exercised the race: some INSERT waited for the other writer's uncommitted key and then
    # skipped it (ON CONFLICT DO NOTHING draws the identity value first; without a rollback, nothing
    # else here leaves an identity value unused).
    assert contended > 0, "the two consumers never created the same key at the same time"
    # ... and found it there: a key created twice would have failed on the UNIQUE constraint, and the
    # window would have been bisected (healing it, as the retried INSERT then finds the key committed).
    bisected = [line for p in (first, second) for line in p.output().splitlines() if "bisection" in line]
    assert bisected == [], bisected
    # Keys are created in key order, so writers wait for each other instead of deadlocking; a retried
    # deadlock would still be correct (the totals above), so it is reported, and a storm refused.
    assert len(retries) <= 2, retries


# -- 2. SIGKILL mid-stream ----------------------------------------------------------------------------


def test_sigkill_mid_stream_keeps_totals_exact_and_mappings_unique(
    kafka: KafkaService, database_url: str, service_env: dict[str, str],
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    """A crash right after a window's lookups created keys (a failpoint: exit 137, no COMMIT), then two
    SIGKILLs at rising row counts; new keys keep appearing all along the stream."""
    pipeline = vendor_pipeline(tmp_path, unique)
    prepare(service_env, pipeline, kafka, unique)
    keys = universe(10, 60)
    rng, maker = random.Random(201), LineMaker(seed=202)
    lines = []
    for n in range(6000):
        known = min(len(keys), 10 + n // 10)  # a new key every ~10 events
        lines.append(maker.spelled(*keys[rng.randrange(known)], variants=0.3))
    lines += [lines[i] for i in rng.sample(range(len(lines)), 120)]  # producer duplicates
    partition_of = [int(line.event_id[-1], 16) % PARTITIONS for line in lines]
    produce(kafka, unique, lines, partition_of)
    expected = Expected()
    expected.add(lines)
    total = len(expected.events)

    env = {**service_env, "MICROBATCH_MAX_RECORDS": "250"}
    crashing = consumer_factory({**env, "MICROBATCH_FAILPOINTS": "after_lookups:crash@4"}, pipeline)
    assert crashing.wait(timeout=90) == 137, crashing.output()[-3000:]
    assert "failpoint after_lookups: crash" in crashing.output()
    after_crash = mappings(database_url)
    assert after_crash.item_ids_unused > 0, "the window that crashed had created no item"
    assert after_crash.orphan_items == after_crash.orphan_vendors == 0, (
        "keys created by the window that crashed before its COMMIT survived it"
    )
    assert rows(database_url) < total

    consumer = consumer_factory(env, pipeline)
    for threshold in (2000, 4000):
        wait_until(lambda: rows(database_url) >= threshold, timeout=90, what=f"{threshold} rows",  # noqa: B023
                   interval=0.02)  # fmt: skip
        consumer.kill()
        assert rows(database_url) < total, f"the kill at {threshold} rows found the stream already written"
        consumer = consumer_factory(env, pipeline)
    wait_until(drained(kafka, database_url, unique), timeout=120, what="the last consumer to catch up")
    assert consumer.terminate() == 0, consumer.output()[-3000:]

    found = assert_exact(database_url, expected)
    print(f"{total} events, {len(expected.keys)} items; identity values of rolled-back creations: "
          f"{found.vendor_ids_unused} vendors, {found.item_ids_unused} items")  # fmt: skip
    assert read_topic(kafka.bootstrap, f"{topic_of(unique)}.dlq") == []


# -- 3. find-only lookups -----------------------------------------------------------------------------
