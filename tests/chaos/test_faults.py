"""T2 T3 T4 T6 T7 T8 T9 T10 T11: the servers fail, consumers freeze, the group churns, the input turns bad."""

from __future__ import annotations

import json
import math
import re
import signal
import time
from collections.abc import Callable

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.cimpl import NewTopic
from psycopg import sql

from devstack.kafka_server import KafkaServer
from devstack.postgres_server import PostgresServer
from devstack.verify import read_topic, stored_positions
from tests.chaos.conftest import StreamFactory
from tests.support.chaos import Scenario, Stream, iterations
from tests.support.consumer_process import ConsumerProcess
from tests.support.kafka_io import metrics_port, scrape
from tests.support.services import wait_until

EXIT_UNCLEAN = 1  # shutdown deadline passed with records unwritten (README: exit codes)


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


@pytest.mark.scenario("T2 PostgreSQL restart -m immediate + backend terminated")
def test_t2_postgres_restarts_and_terminated_backends(
    make_stream: StreamFactory, own_postgres: PostgresServer, scenario: Scenario
) -> None:
    stream = make_stream(database=own_postgres.url)
    rounds = iterations(quick=1, full=5)
    stream.produce(4000 + rounds * 4000, seed=21, rate=2500, background=True)
    stream.consumer()
    terminated: list[int] = []
    for n in range(rounds):
        stream.wait_progress()
        stream.ensure_load(seed=210 + n)
        stream.inject(lambda: own_postgres.restart("immediate"))  # a crash of the database server
        stream.wait_progress(timeout=90)
        stream.ensure_load(seed=220 + n)
        stream.inject(lambda: terminated.append(terminate_backends(own_postgres.url)))
        assert terminated[-1] > 0, "no microbatch backend was connected to terminate"
    stream.recover()
    for consumer in stream.consumers:
        assert consumer.terminate() == 0
    stream.verdict(copies_allowed=1 + scenario.faults)
    scenario.check(min_faults=2 * rounds)


@pytest.mark.scenario("T2 PostgreSQL down 15 s > max.poll.interval.ms")
def test_t2_outage_longer_than_max_poll_interval_keeps_the_member(
    make_stream: StreamFactory, own_postgres: PostgresServer, scenario: Scenario
) -> None:
    stream = make_stream(database=own_postgres.url)
    stream.env["MICROBATCH_KAFKA_CONFIG"] = json.dumps({"max.poll.interval.ms": "10000", "session.timeout.ms": "6000"})
    stream.produce(9000, seed=22, rate=1500, background=True)
    consumer = stream.consumer()
    stream.wait_progress()
    admin = AdminClient({"bootstrap.servers": stream.bootstrap})

    def members() -> list[str]:
        return sorted(
            m.member_id for m in admin.describe_consumer_groups([stream.group])[stream.group].result(10).members
        )

    before = members()
    stream.ensure_load(seed=23)
    live = stream.load_in_hand()  # just before the outage (the consumer may have drained what ensure_load saw)
    own_postgres.stop("fast")
    outage_ends = time.monotonic() + 15  # the fault's duration (longer than max.poll.interval.ms)
    during: list[list[str]] = []
    while time.monotonic() < outage_ends:
        during.append(members())
        time.sleep(1)
    own_postgres.start()
    scenario.fault(live=live)
    stream.fault_ended()
    stream.recover()
    after = members()
    assert consumer.terminate() == 0
    stream.verdict(copies_allowed=2)
    same = all(seen == before for seen in during) and after == before
    scenario.notes.append("same group member throughout" if same else "member changed")
    assert same, "the consumer was evicted from its group during the outage"
    scenario.check()


def _said(consumer: ConsumerProcess, text: str) -> Callable[[], bool]:
    return lambda: text in consumer.output() or not consumer.running()


@pytest.mark.scenario("T3 connection lost during COMMIT")
def test_t3_connection_lost_during_commit(stream: Stream, scenario: Scenario) -> None:
    rounds = iterations(quick=1, full=20)
    for n in range(rounds):
        stream.produce(2500, seed=31 + n, rate=5000, background=True)  # every round has commits to lose
        # The COMMIT succeeds, then the client sees a lost connection: it must not write again.
        consumer = stream.consumer(MICROBATCH_FAILPOINTS="commit_ack_lost:raise:08006@2")
        wait_until(_said(consumer, "failpoint commit_ack_lost"), timeout=90, what="the lost COMMIT acknowledgement")
        scenario.fault(live="failpoint commit_ack_lost" in consumer.output())
        stream.fault_ended()
        assert consumer.terminate() == 0
    final = stream.settled_consumer()
    stream.recover()
    assert final.terminate() == 0
    stream.verdict()
    scenario.check(min_faults=rounds)


@pytest.mark.scenario("T4 broker restart (clean and kill -9)")
def test_t4_broker_restarts_clean_and_hard(
    make_stream: StreamFactory, own_kafka: KafkaServer, scenario: Scenario
) -> None:
    stream = make_stream(bootstrap=own_kafka.bootstrap)
    rounds = iterations(quick=1, full=3)
    stream.produce(8000 + rounds * 8000, seed=41, rate=2000, background=True)
    consumer = stream.consumer()
    for n in range(rounds):
        stream.wait_progress(timeout=120)
        stream.ensure_load(seed=410 + n)
        stream.inject(lambda: own_kafka.restart(hard=False))
        stream.wait_progress(timeout=120)
        stream.ensure_load(seed=420 + n)
        stream.inject(lambda: own_kafka.restart(hard=True))
    stream.recover(timeout=240)
    assert consumer.terminate() == 0
    stream.verdict(copies_allowed=1 + scenario.faults)
    scenario.check(min_faults=2 * rounds)


@pytest.mark.scenario("T6 zombie (SIGSTOP mid-flush, then SIGCONT)")
def test_t6_zombie_frozen_mid_flush_is_fenced(stream: Stream, scenario: Scenario) -> None:
    stream.produce(8000, seed=61, rate=2000, background=True)
    zombie = stream.consumer(MICROBATCH_FAILPOINTS="before_commit:sleep:4000@3")
    wait_until(lambda: "failpoint before_commit" in zombie.output(), timeout=90, what="the zombie inside a flush")
    zombie.signal(signal.SIGSTOP)  # frozen with its transaction open and its offsets rows locked
    try:
        frozen_at = sum(stored_positions(stream.database_url, stream.group).values())
        heir = stream.consumer()
        # Taken over: the heir wrote past what the zombie had committed before it froze (its session is
        # ended by PostgreSQL's idle-in-transaction timeout, which releases the offsets rows it locked).
        wait_until(lambda: "assigned invoices" in heir.output()
                   and sum(stored_positions(stream.database_url, stream.group).values()) > frozen_at,
                   timeout=120, what="the new owner to write while the zombie is frozen")  # fmt: skip
    finally:
        zombie.signal(signal.SIGCONT)
    scenario.fault(live=True)  # frozen inside its flush (the failpoint)
    stream.fault_ended()
    # The zombie wakes up, finishes its sleep and tries to COMMIT: its session is gone, its range written.
    wait_until(lambda: "flush failed" in zombie.output() or "fenced" in zombie.output(), timeout=60,
               what="the zombie's failed flush")  # fmt: skip
    stream.recover()
    assert zombie.terminate() == 0
    assert heir.terminate() == 0
    verdict = stream.verdict(copies_allowed=2)
    scenario.check()
    assert stream.duplicates_skipped() == verdict.ledger_duplicates


def _all_assigned(consumers: list[ConsumerProcess]) -> Callable[[], bool]:
    return lambda: all("assigned invoices" in c.output() for c in consumers)


@pytest.mark.scenario("T7 rebalance storm 1→3→1 on 6 partitions")
def test_t7_rebalance_storm_one_three_one(make_stream: StreamFactory, scenario: Scenario) -> None:
    stream = make_stream(partitions=6)
    rounds = iterations(quick=1, full=3)
    stream.produce(9000 + rounds * 9000, seed=71, rate=2500, background=True)
    stream.consumer()
    for n in range(rounds):
        stream.wait_progress()
        stream.ensure_load(seed=710 + n)
        extra: list[ConsumerProcess] = []
        stream.inject(lambda: extra.extend([stream.consumer(), stream.consumer()]))  # noqa: B023
        wait_until(_all_assigned(extra), timeout=90, what="three consumers sharing six partitions")
        stream.wait_progress()
        stream.ensure_load(seed=720 + n)

        def leave(consumers: list[ConsumerProcess] = extra) -> None:
            for consumer in consumers:
                assert consumer.terminate() == 0

        # Judged live like every instantaneous fault: just before it, after new work arrived if the
        # consumers caught up meanwhile (a fast consumer can drain what ensure_load saw in hand).
        stream.inject(leave)
    stream.recover()
    assert stream.consumers[0].terminate() == 0
    verdict = stream.verdict()
    scenario.check(min_faults=2 * rounds)
    assert stream.duplicates_skipped() == verdict.ledger_duplicates


@pytest.mark.scenario("T8 poison + rows the database rejects")
def test_t8_poison_and_database_rejects(stream: Stream, scenario: Scenario) -> None:
    with psycopg.connect(stream.database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions ADD CONSTRAINT not_thirteen CHECK (quantity <> 13)")
    stream.env["MICROBATCH_MAX_MESSAGE_BYTES"] = "150000"  # the 200 kB nested arrays become too_large
    stream.produce(8000, seed=81, rate=4000, bad_ratio=0.05, background=True)
    consumer = stream.consumer()
    stream.wait_produced()
    scenario.fault(live=stream.under_load())  # the poisoned stream, all of it acknowledged by now
    stream.fault_ended()
    stream.recover()
    assert consumer.running(), "the consumer crashed on poison"
    assert consumer.terminate() == 0
    verdict = stream.verdict(rejected_by_database=lambda invoice: invoice.quantity == 13)
    reasons: dict[str, int] = {}
    for letter in read_topic(stream.bootstrap, stream.dead_letter_topic):
        reasons[letter.headers["dlq.reason"]] = reasons.get(letter.headers["dlq.reason"], 0) + 1
    scenario.notes.append(f"dead letters by reason {dict(sorted(reasons.items()))}")
    assert {"db_rejected", "too_large", "invalid_json", "invalid_event", "empty"} <= set(reasons)
    scenario.check()
    assert stream.duplicates_skipped() == verdict.ledger_duplicates


@pytest.mark.scenario("T9 dead-letter topic unavailable")
def test_t9_dead_letter_topic_unavailable(stream: Stream, scenario: Scenario) -> None:
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

    def passed() -> dict[tuple[str, int], int]:
        stored = stored_positions(stream.database_url, stream.group)
        return {pid: pos for pid, pos in stored.items() if pid in first_bad and pos > first_bad[pid]}

    # The fault lasts a while: positions must hold at the first undelivered dead letter all along.
    holds_until = time.monotonic() + 5
    while time.monotonic() < holds_until:
        assert passed() == {}, f"positions moved past undelivered dead letters: {passed()}"
        time.sleep(0.5)
    assert read_topic(stream.bootstrap, topic) == []
    entry = ConfigEntry("max.message.bytes", "1048588", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource("topic", topic, incremental_configs=[entry])
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    scenario.fault(live=True)  # the consumer was blocked on its dead letters (seen above)
    stream.fault_ended()
    scenario.recovery_from = "the repair of the dead-letter topic"
    stream.recover()
    assert consumer.terminate() == 0
    verdict = stream.verdict(copies_allowed=2)
    scenario.check()
    assert stream.duplicates_skipped() == verdict.ledger_duplicates


@pytest.mark.scenario("T10 privilege revoked mid-run")
def test_t10_privilege_revoked_mid_run(stream: Stream, scenario: Scenario) -> None:
    role = f"mb_{stream.name}"
    with psycopg.connect(stream.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role))
        )
    info = psycopg.conninfo.conninfo_to_dict(stream.database_url)
    info["user"] = role
    url = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
    stream.produce(9000, seed=101, rate=2000, background=True)
    consumer = stream.consumer(DATABASE_URL=url)
    stream.wait_progress()
    stream.ensure_load(seed=102)
    live = stream.load_in_hand()  # just before the REVOKE (the consumer may have drained what ensure_load saw)
    with psycopg.connect(stream.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("REVOKE INSERT ON transactions FROM {}").format(sql.Identifier(role)))
    wait_until(lambda: sample(consumer, "microbatch_halted") == 1, timeout=60, what="the consumer to halt")
    dead_while_halted = len(read_topic(stream.bootstrap, stream.dead_letter_topic))
    halted_lines = [line for line in consumer.output().splitlines() if "halted:" in line]
    with psycopg.connect(stream.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT INSERT ON transactions TO {}").format(sql.Identifier(role)))
    scenario.fault(live=live)
    stream.fault_ended()
    scenario.recovery_from = "the GRANT (the operator's repair)"
    stream.recover()
    assert sample(consumer, "microbatch_halted") == 0
    assert consumer.terminate() == 0
    verdict = stream.verdict()
    with psycopg.connect(stream.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    found = re.search(r"halted: (.*?\(SQLSTATE \w+\))", halted_lines[0]) if halted_lines else None
    scenario.notes.append(found.group(1) if found else "no halt line")
    assert len(halted_lines) == 1 and "permission denied" in halted_lines[0]
    assert dead_while_halted <= verdict.bad, "good messages were dead-lettered while halted"
    scenario.check()
    assert stream.duplicates_skipped() == verdict.ledger_duplicates


@pytest.mark.scenario("T11 100% bad input")
def test_t11_all_bad_input_trips_the_breaker(stream: Stream, scenario: Scenario) -> None:
    limit = 200
    stream.produce(3000, seed=111, bad_ratio=1.0)
    consumer = stream.consumer(MICROBATCH_BREAKER_MAX_CONSECUTIVE=str(limit), MICROBATCH_BREAKER_MIN_RECORDS="50")
    wait_until(lambda: sample(consumer, "microbatch_breaker_open") == 1, timeout=60, what="the breaker to open")
    dead_when_open = len(read_topic(stream.bootstrap, stream.dead_letter_topic))
    held = sum(stored_positions(stream.database_url, stream.group).values())
    # A halted consumer holds records it may not write: it exits within its deadline, not cleanly.
    code = consumer.terminate(timeout=60)
    assert code == EXIT_UNCLEAN, consumer.output()[-2000:]
    assert "records unwritten" in consumer.output()
    # No position moved from the breaker's opening to the exit: nothing past it was written off.
    assert sum(stored_positions(stream.database_url, stream.group).values()) == held, "positions held while open"
    scenario.fault(live=True)  # the breaker opened on the work in hand
    # The operator's repair: the input is known to be bad, let it drain to the dead-letter topic.
    stream.fault_ended()
    scenario.recovery_from = "the restart with the breaker opened up (the operator's repair)"
    final = stream.consumer(MICROBATCH_BREAKER_MAX_CONSECUTIVE="1000000", MICROBATCH_BREAKER_MAX_RATIO="1.0")
    stream.recover()
    assert final.terminate() == 0
    verdict = stream.verdict()
    scenario.notes.append(f"breaker open at {dead_when_open} dead letters (limit {limit}), {held} positions held")
    assert dead_when_open < limit
    assert sum(stored_positions(stream.database_url, stream.group).values()) > held, "the restart drained it"
    assert verdict.bad == verdict.events == 3000
    scenario.check()
