"""T12 (a topic deleted and re-created mid-stream) and T13 (retention deletes unread records while the
consumer is stopped): positions that must not be trusted, under load, against the oracle."""

from __future__ import annotations

import json
import re

import psycopg
import pytest
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from devstack.postgres_server import PostgresServer
from devstack.verify import high_watermarks, stored_positions
from tests.chaos.conftest import StreamFactory
from tests.support.chaos import Scenario, Stream, iterations
from tests.support.consumer_process import ConsumerProcess, run_cli
from tests.support.kafka_io import halted, port_of, sample
from tests.support.services import wait_until
from tests.support.user_paths import delete_topics


def _events(stream: Stream, kind: str) -> list[tuple[int, int | None, int | None, str]]:
    with psycopg.connect(stream.database_url) as conn:
        rows = conn.execute(
            "SELECT partition, old_position, new_position, detail FROM microbatch_position_events "
            "WHERE consumer_group = %s AND kind = %s ORDER BY id",
            (stream.group, kind),
        ).fetchall()
    return [(int(r[0]), r[1], r[2], str(r[3])) for r in rows]


def _produced(stream: Stream) -> int:
    """Messages in the topic now (0 while it does not exist)."""
    try:
        return sum(high_watermarks(stream.bootstrap, stream.topic, stream.partitions).values())
    except KafkaException:
        return 0


@pytest.mark.scenario("T12 topic deleted and re-created mid-stream")
def test_t12_topic_deleted_and_re_created(stream: Stream, scenario: Scenario) -> None:
    rounds = iterations(quick=1, full=3)
    consumer = stream.consumer()
    for n in range(rounds):
        stream.produce(6000, seed=120 + n, rate=4000, background=True)
        stream.wait_produced()
        wait_until(stream.caught_up, timeout=90, what="the first incarnation to be written")
        # The topic goes away under the running consumer, and comes back under the same name with new
        # messages whose offsets start at 0 again: the consumer's stored positions belong to the old one.
        delete_topics(stream.bootstrap, stream.topic)
        stream.produce(4000, seed=130 + n, rate=4000, background=True)
        wait_until(lambda: _produced(stream) > 0, timeout=60, what="the new incarnation's first messages")
        scenario.fault(live=True)  # the new incarnation's messages wait for the running consumer
        stream.wait_produced()
        stream.exact_recovery = True
        stream.fault_ended()
    stream.recover()
    assert consumer.running(), "the consumer exited on a re-created topic"
    assert consumer.terminate() == 0
    stream.verdict(copies_allowed=2)
    resets = _events(stream, "topic_recreated")
    scenario.notes.append(f"{len(resets)} topic_recreated audit rows")
    assert sorted(p for p, *_ in resets) == sorted(list(range(stream.partitions)) * rounds), resets
    scenario.check(min_faults=rounds)


def _paused_by_a_database_outage(
    make_stream: StreamFactory, own_postgres: PostgresServer, *, seed: int
) -> tuple[Stream, ConsumerProcess, dict[tuple[str, int], int]]:
    """A consumer that wrote 3,000 messages, then read 400 more that it cannot write: the database is
    down and every partition paused, so librdkafka fetches nothing and learns nothing of the topic from
    its fetches. Returns the stream, the consumer, and the high watermarks before the 400."""
    stream = make_stream(database=own_postgres.url)
    # librdkafka refreshes its metadata every 5 minutes by default, and a refresh that fell while the
    # topic is gone would revoke its partitions (the case T12 covers); here it must not happen at all.
    stream.env["MICROBATCH_KAFKA_CONFIG"] = json.dumps({"topic.metadata.refresh.interval.ms": "3600000"})
    stream.produce(3000, seed=seed, rate=3000)
    consumer = stream.consumer()
    wait_until(stream.caught_up, timeout=90, what="the first incarnation to be written")
    consumed = f'microbatch_messages_consumed_total{{topic="{stream.topic}"}}'
    read_before = sample(port_of(consumer), consumed)
    old_end = high_watermarks(stream.bootstrap, stream.topic, stream.partitions)
    own_postgres.stop("fast")
    stream.produce(400, seed=seed + 1, bad_ratio=0.0, duplicate_ratio=0.0)
    wait_until(lambda: "flush failed (transient)" in consumer.output(), timeout=60, what="a write to fail")
    # The scenario's premise, checked rather than assumed: the 400 are in the consumer's hands before the
    # topic goes away. One it never read is deleted with the topic, and the verdict would call it lost.
    wait_until(
        lambda: sample(port_of(consumer), consumed) >= read_before + 400,
        timeout=30,
        what="the consumer to have read the 400 messages produced during the outage, before the deletion",
    )
    return stream, consumer, old_end


def _verdict_over_both_incarnations(stream: Stream, consumer: ConsumerProcess, scenario: Scenario) -> None:
    """Once the consumer caught up and left cleanly: I1 to I5 over both incarnations of the topic, and
    each partition started over on the new one (an audit row each)."""
    stream.recover()
    assert consumer.terminate() == 0
    stream.verdict(copies_allowed=2)
    resets = _events(stream, "topic_recreated")
    scenario.notes.append(f"{len(resets)} topic_recreated audit rows")
    assert sorted(p for p, *_ in resets) == list(range(stream.partitions)), resets


@pytest.mark.scenario("T12b topic re-created while every partition is paused, refilled past its positions")
def test_t12b_topic_re_created_while_paused(
    make_stream: StreamFactory, own_postgres: PostgresServer, scenario: Scenario
) -> None:
    stream, consumer, old_end = _paused_by_a_database_outage(make_stream, own_postgres, seed=125)
    # The 400 were read before the topic went away: the retry writes them once the database is back.
    delete_topics(stream.bootstrap, stream.topic)
    stream.produce(8000, seed=127, rate=8000)
    new_end = high_watermarks(stream.bootstrap, stream.topic, stream.partitions)
    assert all(new_end[pid] > end + 400 for pid, end in old_end.items()), (old_end, new_end)
    # The new incarnation, longer than the old one everywhere: no fetch will be refused when the
    # partitions resume at the old positions, and nothing else tells the consumer the topic changed.
    scenario.fault(live=True)
    own_postgres.start()
    stream.exact_recovery = True
    stream.fault_ended()
    _verdict_over_both_incarnations(stream, consumer, scenario)
    noticed = consumer.output().count("topic ID changed under the running consumer")
    assert noticed == stream.partitions, consumer.output()[-3000:]  # the consumer noticed, not a rebalance
    scenario.check()


@pytest.mark.scenario("T12c topic deleted while every partition is paused, re-created after they would resume")
def test_t12c_topic_deleted_while_paused_and_re_created_later(
    make_stream: StreamFactory, own_postgres: PostgresServer, scenario: Scenario
) -> None:
    stream, consumer, _ = _paused_by_a_database_outage(make_stream, own_postgres, seed=128)
    # The topic is gone when the retry succeeds: the broker cannot say which incarnation comes next, so
    # the partitions are not resumed at their old offsets but placed again once the topic is back.
    delete_topics(stream.bootstrap, stream.topic)
    scenario.fault(live=True)
    own_postgres.start()
    wait_until(lambda: "cannot tell whether" in consumer.output(), timeout=90, what="the retry to find the topic gone")
    stream.produce(8000, seed=131, rate=8000)
    stream.exact_recovery = True
    stream.fault_ended()
    _verdict_over_both_incarnations(stream, consumer, scenario)
    assert consumer.output().count("cannot tell whether") == 1, consumer.output()[-3000:]
    scenario.check()


@pytest.mark.scenario("T13 retention deletes unread records ({policy})")
@pytest.mark.parametrize("policy", ["halt", "skip"])
def test_t13_retention_deletes_what_a_stopped_consumer_had_not_read(
    stream: Stream, scenario: Scenario, policy: str
) -> None:
    stream.env["MICROBATCH_ON_POSITION_GAP"] = policy
    stream.produce(4000, seed=140, rate=5000)
    first = stream.settled_consumer()
    wait_until(stream.caught_up, timeout=90, what="the first stream to be written")
    assert first.terminate() == 0
    stream.produce(6000, seed=141, rate=5000)  # not read: the consumer is stopped
    stored = stored_positions(stream.database_url, stream.group)
    high = high_watermarks(stream.bootstrap, stream.topic, stream.partitions)
    cut = {pid: stored.get(pid, 0) + (mark - stored.get(pid, 0)) // 2 for pid, mark in high.items()}
    admin = AdminClient({"bootstrap.servers": stream.bootstrap})
    deleted = admin.delete_records([TopicPartition(t, p, cut[(t, p)]) for t, p in cut])
    for future in deleted.values():
        future.result(timeout=30)
    stream.produce(3000, seed=142, rate=3000, background=True)  # and the stream goes on
    consumer = stream.consumer()
    if policy == "halt":
        wait_until(lambda: halted(consumer), timeout=60, what="the consumer to halt on the gap")
        lines = [line for line in consumer.output().splitlines() if "halted: position gap" in line]
        named = {int(p) for p in re.findall(rf"{re.escape(stream.topic)}\[(\d+)\] offsets", " ".join(lines))}
        assert named == set(range(stream.partitions)), lines
        # The operator's repair: start from what survived.
        reset = run_cli(stream.env, "positions", "reset", "--topic", stream.topic, "--to", "earliest",
                        "--pipeline", str(stream.pipeline))  # fmt: skip
        assert reset.returncode == 0, reset.stderr
        scenario.recovery_from = "`microbatch positions reset` (the operator's repair)"
    scenario.fault(live=True)  # the consumer had this backlog to read when it started
    stream.fault_ended()
    stream.recover()
    assert consumer.terminate() == 0
    everything = len(stream.ledger())
    stream.deleted = {pid: (stored.get(pid, 0), cut[pid]) for pid in cut}
    verdict = stream.verdict()
    scenario.notes.append(f"{everything - len(stream.ledger())} messages deleted by retention before they were read")
    if policy == "skip":
        skipped = sorted((p, old, new) for p, old, new, _ in _events(stream, "gap_skipped"))
        assert skipped == sorted(
            (p, stored.get((stream.topic, p), 0), cut[(stream.topic, p)]) for p in range(stream.partitions)
        )
    else:
        assert len(_events(stream, "gap_halted")) == stream.partitions
    assert verdict.ok, verdict.details
    scenario.check()
