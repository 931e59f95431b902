"""Start-up and readiness as an orchestrator sees them: a pod started during an outage stays up and
proceeds when the service returns; a member is ready once it joined its group, with or without
partitions, and a missing topic is named instead of blocking the rollout."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from confluent_kafka.admin import AdminClient

from consumer.produce import ensure_topic
from devstack.postgres_server import PostgresServer
from devstack.verify import high_watermarks, stored_positions
from tests.integration.test_failures import assert_exact, good_messages, totals_of
from tests.support.consumer_process import ConsumerProcess, run_cli
from tests.support.dead_letters import readyz
from tests.support.kafka_io import port_of, probe, produce_exact, scrape
from tests.support.services import KafkaService, wait_until


def test_started_while_postgres_is_down_it_stays_up_and_drains_once_it_returns(
    kafka: KafkaService, own_postgres: PostgresServer, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str,
) -> None:  # fmt: skip
    env = {**service_env, "DATABASE_URL": own_postgres.url}
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    topic = f"invoices-{unique}"
    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, 2)
    messages = good_messages(3000, seed=61)
    produce_exact(kafka.bootstrap, topic, [(m.key, m.value, None) for m in messages])
    own_postgres.stop("fast")

    consumer = consumer_factory(env, invoice_pipeline)
    port = port_of(consumer)
    wait_until(lambda: "PostgreSQL at 127.0.0.1" in readyz(port)[1], timeout=30, what="readiness naming "
               "the database")  # fmt: skip
    status, body = readyz(port)
    assert status == 503 and body.startswith("starting: waiting for PostgreSQL at 127.0.0.1"), body
    assert probe(port, "/healthz") == 200
    # A second round of checks (after a back-off of 1 s, then 2 s): still up, still waiting.
    wait_until(lambda: "still waiting (check 2)" in consumer.output(), timeout=30, what="a second check")
    assert consumer.running() and probe(port, "/healthz") == 200

    own_postgres.start()
    group = f"group-{unique}"
    wait_until(lambda: stored_positions(own_postgres.url, group) == high_watermarks(kafka.bootstrap, topic, 2),
               timeout=120, what="the consumer to drain after PostgreSQL came back")  # fmt: skip
    wait_until(lambda: readyz(port) == (200, "ok"), timeout=30, what="ready")
    assert consumer.running()  # the process that started during the outage: never restarted
    assert consumer.terminate() == 0
    assert_exact(own_postgres.url, totals_of(messages))


def test_a_consumer_waits_for_its_tables_while_an_init_job_runs(
    kafka: KafkaService, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str,
) -> None:  # fmt: skip
    topic = f"invoices-{unique}"
    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, 2)
    consumer = consumer_factory(service_env, invoice_pipeline)
    port = port_of(consumer)
    wait_until(lambda: "the tables of pipeline 'invoices'" in readyz(port)[1], timeout=30,
               what="readiness naming the missing tables")  # fmt: skip
    assert readyz(port)[0] == 503 and consumer.running()
    assert run_cli(service_env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    wait_until(lambda: readyz(port) == (200, "ok"), timeout=60, what="ready after init-db")
    assert consumer.terminate() == 0


def test_three_members_on_two_partitions_are_all_ready(
    kafka: KafkaService, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str,
) -> None:  # fmt: skip
    assert run_cli(service_env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), f"invoices-{unique}", 2)
    members = [consumer_factory(service_env, invoice_pipeline) for _ in range(3)]
    ports = [port_of(member) for member in members]
    for port in ports:
        wait_until(lambda: readyz(port) == (200, "ok"), timeout=90, what="every member ready")  # noqa: B023

    # Once the group settles, one member is idle; it stays ready all the same.
    def owned() -> list[int]:
        return sorted(int(scrape(port)["microbatch_assigned_partitions"]) for port in ports)

    wait_until(lambda: owned() == [0, 1, 1], timeout=60, what="the group to settle with one idle member")
    assert [readyz(port) for port in ports] == [(200, "ok")] * 3
    for member in members:
        assert member.terminate() == 0


def test_a_consumer_started_before_its_topic_exists_is_ready_and_names_it(
    kafka: KafkaService, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str,
) -> None:  # fmt: skip
    topic = f"invoices-{unique}"
    assert run_cli(service_env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    consumer = consumer_factory(service_env, invoice_pipeline)
    port = port_of(consumer)
    missing = f'microbatch_topic_missing{{topic="{topic}"}}'
    wait_until(lambda: readyz(port)[0] == 200, timeout=60, what="ready without its topic")
    assert readyz(port) == (200, f"ok; waiting for topic {topic} to exist before joining the group")
    assert scrape(port)[missing] == 1
    status = run_cli(service_env, "status", "--pipeline", str(invoice_pipeline))
    assert status.returncode == 0 and f"topic {topic} does not exist" in status.stdout, status.stdout
    as_json = json.loads(run_cli(service_env, "status", "--json", "--pipeline", str(invoice_pipeline)).stdout)
    assert as_json["missing_topics"] == [topic]

    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, 2)
    messages = good_messages(500, seed=62)
    produce_exact(kafka.bootstrap, topic, [(m.key, m.value, None) for m in messages])
    group = f"group-{unique}"
    wait_until(lambda: stored_positions(service_env["DATABASE_URL"], group)
               == high_watermarks(kafka.bootstrap, topic, 2), timeout=120, what="the topic to be consumed")  # fmt: skip
    wait_until(lambda: readyz(port) == (200, "ok"), timeout=30, what="the topic no longer named")
    assert scrape(port)[missing] == 0
    assert consumer.terminate() == 0
