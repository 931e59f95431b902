"""The consumer's only broker down for a while, against real Kafka and PostgreSQL: a few log lines for
the outage, not a stream of them (consumer/kafka_config.py: RECONNECTS), and once the broker is back
the consumer goes on where it was, nothing lost, nothing written twice."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from devstack.kafka_server import KafkaServer
from devstack.verify import caught_up
from tests.support.consumer_process import ConsumerProcess
from tests.support.dead_letters import PARTITIONS, create_topic, init_db, produce_stream, verdict
from tests.support.oracle import read_ledger
from tests.support.services import wait_until

OUTAGE_S = 20
# librdkafka logs a repeated connection error once per 30 s per broker (two here: the broker and the
# group coordinator's); with re-bootstrap it logged every attempt, about 20 a second.
MOST_ERROR_LINES = 12


def _librdkafka_errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if " ERROR " in line and "librdkafka:" in line]


def test_a_broker_outage_is_logged_in_a_few_lines_and_the_consumer_goes_on_after_it(
    own_kafka: KafkaServer, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic, group = f"invoices-{unique}", f"group-{unique}"
    env = {**service_env, "KAFKA_BOOTSTRAP_SERVERS": own_kafka.bootstrap}
    init_db(env, invoice_pipeline)
    create_topic(own_kafka.bootstrap, topic, PARTITIONS)
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    produce_stream(env, invoice_pipeline, before, 1500, "--bad-ratio", "0.02", "--seed", "91")
    consumer = consumer_factory(env, invoice_pipeline)
    wait_until(lambda: caught_up(database_url, group, own_kafka.bootstrap, topic, PARTITIONS), timeout=120,
               what="the consumer to catch up before the outage")  # fmt: skip
    logged = len(consumer.output())

    own_kafka.stop(hard=True)
    wait_until(lambda: "Connection refused" in consumer.output()[logged:], timeout=30,
               what="the consumer to find its broker gone")  # fmt: skip
    outage_ends = time.monotonic() + OUTAGE_S
    while time.monotonic() < outage_ends:  # the outage itself: the consumer must ride it out
        assert consumer.running(), consumer.output()[-3000:]
        time.sleep(0.5)
    errors = _librdkafka_errors(consumer.output()[logged:])
    assert 0 < len(errors) <= MOST_ERROR_LINES, f"{len(errors)} ERROR lines in a {OUTAGE_S} s outage:\n" + "\n".join(
        errors[:20]
    )

    own_kafka.restart()
    produce_stream(env, invoice_pipeline, after, 1500, "--bad-ratio", "0.02", "--seed", "92")
    wait_until(lambda: caught_up(database_url, group, own_kafka.bootstrap, topic, PARTITIONS), timeout=120,
               what="the consumer to catch up after the outage")  # fmt: skip
    assert consumer.terminate() == 0
    found = verdict(own_kafka.bootstrap, database_url, unique, read_ledger([before, after]), copies=1)
    assert found.bad > 20
