"""T2 T3 T4 T6 T7 T8 T9 T10 T11: the servers fail, consumers freeze, the group churns, the input turns bad."""

from __future__ import annotations

import json
import math
import re
import signal
import time
from collections.abc import Callable

import psycopg
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.cimpl import NewTopic
from psycopg import sql

from devstack.kafka_server import KafkaServer
from devstack.postgres_server import PostgresServer
from devstack.verify import read_topic, stored_positions
from tests.chaos.conftest import StreamFactory
from tests.support.chaos import REPORT, Stream, iterations
from tests.support.consumer_process import ConsumerProcess
from tests.support.kafka_io import metrics_port, scrape
from tests.support.oracle import Verdict
from tests.support.services import wait_until


def sample(consumer: ConsumerProcess, name: str) -> float:
    port = metrics_port(consumer.output())
    return math.nan if port is None else scrape(port).get(name, math.nan)


def terminate_backends(database_url: str) -> int:
    """pg_terminate_backend() every microbatch session: what an admin or a failover does."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'microbatch'"
        ).fetchall()
    return len(rows)


def test_t2_postgres_restarts_and_terminated_backends(make_stream: StreamFactory, own_postgres: PostgresServer) -> None:
    stream = make_stream(database=own_postgres.url)
    rounds = iterations(quick=1, full=5)
    stream.produce(3000 + rounds * 2500, seed=21, rate=2500, background=True)
    consumer = stream.consumer()
    faults = 0
    for _ in range(rounds):
        stream.wait_progress()
        own_postgres.restart("immediate")  # a crash of the database server
        faults += 1
        stream.wait_progress(timeout=90)
        faults += terminate_backends(own_postgres.url) > 0
    recovery = stream.wait_caught_up()
    assert consumer.terminate() == 0
    verdict = stream.verdict()
    REPORT.add("T2 PostgreSQL restart -m immediate + backend terminated", faults, verdict, recovery)
    assert verdict.ok, verdict.details


def test_t2_outage_longer_than_max_poll_interval_keeps_the_member(
    make_stream: StreamFactory, own_postgres: PostgresServer
) -> None:
    stream = make_stream(database=own_postgres.url)
    stream.env["MICROBATCH_KAFKA_CONFIG"] = json.dumps({"max.poll.interval.ms": "10000", "session.timeout.ms": "6000"})
    stream.produce(6000, seed=22, rate=1500, background=True)
    consumer = stream.consumer()
    stream.wait_progress()
    admin = AdminClient({"bootstrap.servers": stream.bootstrap})

    def members() -> list[str]:
        return sorted(
            m.member_id for m in admin.describe_consumer_groups([stream.group])[stream.group].result(10).members
        )

    before = members()
    own_postgres.stop("fast")
    time.sleep(15)  # the fault's duration (longer than max.poll.interval.ms), not a synchronisation
    during = members()
    own_postgres.start()
    recovery = stream.wait_caught_up()
    after = members()
    assert consumer.terminate() == 0
    verdict = stream.verdict()
    same = before == during == after
    REPORT.add("T2 PostgreSQL down 15 s > max.poll.interval.ms", 1, verdict, recovery,
               notes="same group member throughout" if same else "member changed")  # fmt: skip
    assert same, "the consumer was evicted from its group during the outage"
    assert verdict.ok, verdict.details


def _said(consumer: ConsumerProcess, text: str) -> Callable[[], bool]:
    return lambda: text in consumer.output() or not consumer.running()


def test_t3_connection_lost_during_commit(stream: Stream) -> None:
    rounds = iterations(quick=1, full=20)
    faults = 0
    for n in range(rounds):
        stream.produce(2500, seed=31 + n, rate=5000, background=True)  # every round has commits to lose
        # The COMMIT succeeds, then the client sees a lost connection: it must not write again.
        consumer = stream.consumer(MICROBATCH_FAILPOINTS="commit_ack_lost:raise:08006@2")
        wait_until(_said(consumer, "failpoint commit_ack_lost"), timeout=90, what="the lost COMMIT acknowledgement")
        faults += "failpoint commit_ack_lost" in consumer.output()
        assert consumer.terminate() == 0
    final = stream.settled_consumer()
    recovery = stream.wait_caught_up()
    assert final.terminate() == 0
    verdict = stream.verdict()
    REPORT.add("T3 connection lost during COMMIT", faults, verdict, recovery)
    assert faults == rounds
    assert verdict.ok, verdict.details


def test_t4_broker_restarts_clean_and_hard(make_stream: StreamFactory, own_kafka: KafkaServer) -> None:
    stream = make_stream(bootstrap=own_kafka.bootstrap)
    rounds = iterations(quick=1, full=3)
    stream.produce(4000 + rounds * 4000, seed=41, rate=2000, background=True)
    consumer = stream.consumer()
    for _ in range(rounds):
        for hard in (False, True):
            stream.wait_progress(timeout=120)
            own_kafka.restart(hard=hard)
    recovery = stream.wait_caught_up(timeout=240)
    assert consumer.terminate() == 0
    verdict = stream.verdict()
    REPORT.add("T4 broker restart (clean and kill -9)", 2 * rounds, verdict, recovery)
    assert verdict.ok, verdict.details


def test_t6_zombie_frozen_mid_flush_is_fenced(stream: Stream) -> None:
    stream.produce(8000, seed=61, rate=2000, background=True)
    zombie = stream.consumer(MICROBATCH_FAILPOINTS="before_commit:sleep:4000@3")
    wait_until(lambda: "failpoint before_commit" in zombie.output(), timeout=90, what="the zombie inside a flush")
    zombie.signal(signal.SIGSTOP)  # frozen with its transaction open and its offsets rows locked
    try:
        heir = stream.consumer()
        stream.wait_produced()
        wait_until(stream.caught_up, timeout=120, what="the new owner to catch up while the zombie is frozen")
    finally:
        zombie.signal(signal.SIGCONT)
    # The zombie wakes up, finishes its sleep and tries to COMMIT: its session is gone, its range written.
    wait_until(lambda: "flush failed" in zombie.output() or "fenced" in zombie.output(), timeout=60,
               what="the zombie's failed flush")  # fmt: skip
    recovery = stream.wait_caught_up()
    assert zombie.terminate() == 0
    assert heir.terminate() == 0
    verdict = stream.verdict()
    REPORT.add("T6 zombie (SIGSTOP mid-flush, then SIGCONT)", 1, verdict, recovery)
    assert verdict.ok, verdict.details


def _all_assigned(consumers: list[ConsumerProcess]) -> Callable[[], bool]:
    return lambda: all("assigned invoices" in c.output() for c in consumers)


def test_t7_rebalance_storm_one_three_one(make_stream: StreamFactory) -> None:
    stream = make_stream(partitions=6)
    rounds = iterations(quick=1, full=3)
    stream.produce(6000 + rounds * 8000, seed=71, rate=2500, background=True)
    first = stream.consumer()
    for _ in range(rounds):
        stream.wait_progress()
        extra = [stream.consumer(), stream.consumer()]
        wait_until(_all_assigned(extra), timeout=90, what="three consumers sharing six partitions")
        stream.wait_progress()
        for consumer in extra:
            assert consumer.terminate() == 0
    recovery = stream.wait_caught_up()
    assert first.terminate() == 0
    verdict = stream.verdict()
    REPORT.add("T7 rebalance storm 1→3→1 on 6 partitions", 2 * rounds, verdict, recovery)
    assert verdict.ok, verdict.details


def test_t8_poison_and_database_rejects(stream: Stream) -> None:
    with psycopg.connect(stream.database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions ADD CONSTRAINT not_thirteen CHECK (quantity <> 13)")
    stream.env["MICROBATCH_MAX_MESSAGE_BYTES"] = "150000"  # the 200 kB nested arrays become too_large
    stream.produce(8000, seed=81, rate=4000, bad_ratio=0.05, background=True)
    consumer = stream.consumer()
    recovery = stream.wait_caught_up()
    assert consumer.running(), "the consumer crashed on poison"
    assert consumer.terminate() == 0
    verdict = stream.verdict(rejected_by_database=lambda entry: entry.get("quantity") == 13)
    rejected = sum(1 for e in stream.ledger() if e["good"] and e["quantity"] == 13)
    REPORT.add("T8 poison + rows the database rejects", verdict.bad, verdict, recovery,
               notes=f"{rejected} rows refused by a CHECK constraint")  # fmt: skip
    assert rejected > 0
    assert verdict.ok, verdict.details


def test_t9_dead_letter_topic_unavailable(stream: Stream) -> None:
    admin = AdminClient({"bootstrap.servers": stream.bootstrap})
    topic = stream.dead_letter_topic
    created = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1,
                                            config={"max.message.bytes": "16"})])  # fmt: skip
    created[topic].result(timeout=30)
    stream.produce(4000, seed=91, rate=4000)
    consumer = stream.consumer(MICROBATCH_DEAD_LETTER_TIMEOUT_S="3")
    wait_until(lambda: "dead letters not acknowledged" in consumer.output(), timeout=60, what="dead-letter failures")
    first_bad: dict[tuple[str, int], int] = {}
    for line in stream.ledger():
        if not line["good"]:
            pid = (line["topic"], line["partition"])
            first_bad[pid] = min(first_bad.get(pid, line["offset"]), line["offset"])
    time.sleep(5)  # the fault lasts a while: positions must hold at the first undelivered dead letter
    stored = stored_positions(stream.database_url, stream.group)
    passed = {pid: pos for pid, pos in stored.items() if pid in first_bad and pos > first_bad[pid]}
    assert passed == {}, f"positions moved past undelivered dead letters: {passed}"
    assert read_topic(stream.bootstrap, topic) == []
    entry = ConfigEntry("max.message.bytes", "1048588", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource("topic", topic, incremental_configs=[entry])
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    recovery = stream.wait_caught_up()
    assert consumer.terminate() == 0
    verdict = stream.verdict()
    REPORT.add("T9 dead-letter topic unavailable", 1, verdict, recovery)
    assert verdict.ok, verdict.details


def test_t10_privilege_revoked_mid_run(stream: Stream) -> None:
    role = f"mb_{stream.name}"
    with psycopg.connect(stream.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role))
        )
    info = psycopg.conninfo.conninfo_to_dict(stream.database_url)
    info["user"] = role
    url = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
    stream.produce(6000, seed=101, rate=2000, background=True)
    consumer = stream.consumer(DATABASE_URL=url)
    stream.wait_progress()
    with psycopg.connect(stream.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("REVOKE INSERT ON transactions FROM {}").format(sql.Identifier(role)))
    wait_until(lambda: sample(consumer, "microbatch_halted") == 1, timeout=60, what="the consumer to halt")
    dead_while_halted = len(read_topic(stream.bootstrap, stream.dead_letter_topic))
    halted_lines = [line for line in consumer.output().splitlines() if "halted:" in line]
    with psycopg.connect(stream.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT INSERT ON transactions TO {}").format(sql.Identifier(role)))
    recovery = stream.wait_caught_up()
    assert sample(consumer, "microbatch_halted") == 0
    assert consumer.terminate() == 0
    verdict = stream.verdict()
    with psycopg.connect(stream.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    found = re.search(r"halted: (.*?\(SQLSTATE \w+\))", halted_lines[0]) if halted_lines else None
    REPORT.add("T10 privilege revoked mid-run", 1, verdict, recovery, notes=found.group(1) if found else "")
    assert len(halted_lines) == 1 and "permission denied" in halted_lines[0]
    assert dead_while_halted <= verdict.bad, "good messages were dead-lettered while halted"
    assert verdict.ok, verdict.details


def test_t11_all_bad_input_trips_the_breaker(stream: Stream) -> None:
    limit = 200
    stream.produce(3000, seed=111, bad_ratio=1.0)
    consumer = stream.consumer(MICROBATCH_BREAKER_MAX_CONSECUTIVE=str(limit), MICROBATCH_BREAKER_MIN_RECORDS="50")
    started = time.monotonic()
    wait_until(lambda: sample(consumer, "microbatch_breaker_open") == 1, timeout=60, what="the breaker to open")
    tripped = time.monotonic() - started
    dead = read_topic(stream.bootstrap, stream.dead_letter_topic)
    stored = stored_positions(stream.database_url, stream.group)
    consumer.terminate()
    # Nothing is lost: every message not dead-lettered is still ahead of its stored position.
    dead_at = {(int(d.headers["dlq.original.partition"]), int(d.headers["dlq.original.offset"])) for d in dead}
    behind = [
        e for e in stream.ledger()
        if e["offset"] < stored.get((e["topic"], e["partition"]), 0) and (e["partition"], e["offset"]) not in dead_at
    ]  # fmt: skip
    verdict = Verdict(events=len(stream.ledger()), bad=len(stream.ledger()), lost=len(behind), dead_letters=len(dead))
    REPORT.add(
        "T11 100% bad input", 1, verdict, tripped, notes=f"breaker open at {len(dead)} dead letters (limit {limit})"
    )
    assert len(dead) < limit
    assert behind == []
