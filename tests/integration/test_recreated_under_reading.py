"""A topic deleted and re-created while the consumer reads it, refilled past its positions at once, for
a pipeline whose dedupe key holds the topic ID, against a real broker.

librdkafka reports nothing when a subscribed topic is deleted under it: it reads the new topic from the
old offsets. Written then, those messages were stamped with the old topic ID, then written again when
the background check (every 10 s) placed the partition on the new topic's start: counted twice, and
the new topic's first messages left out until then. Each write now asks which incarnation its records
were read from first (consumer/incarnations.py, `confirm`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from consumer.log_facts import LogFacts
from consumer.produce import ensure_topic
from devstack.postgres_server import PostgresServer
from devstack.verify import caught_up
from tests.integration.test_positions import PARTITIONS, _env, _events, _sample, _settle, coordinates_pipeline
from tests.support.consumer_process import ConsumerProcess, run_cli
from tests.support.dead_letters import produce_noisy
from tests.support.invoice_rules import judge
from tests.support.oracle import entry_bytes, read_ledger
from tests.support.services import KafkaService, wait_until
from tests.support.user_paths import delete_topics


def _good(ledger: Path) -> int:
    """The messages of `ledger` that are written (one row each: the key is Kafka coordinates)."""
    return sum(1 for e in read_ledger([ledger]) if judge(entry_bytes(e, "value")).invoice is not None)


def test_a_topic_re_created_under_a_reading_consumer_is_written_once_each_row_with_its_own_topic_id(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic, env = f"invoices-{unique}", _env(service_env)
    pipeline = coordinates_pipeline(invoice_pipeline, tmp_path, with_topic_id=True)
    assert run_cli(env, "init-db", "--pipeline", str(pipeline)).returncode == 0
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    # Short, so that the new topic is longer than the old positions after its first few messages: a
    # fetch at the old offsets is then seldom refused, and the running consumer reads the new topic there.
    produce_noisy(env, pipeline, first, 300, seed=8, partitions=PARTITIONS)
    consumer = consumer_factory(env, pipeline)
    wait_until(_settle(kafka, database_url, unique), timeout=90, what="the first incarnation to be written")
    with psycopg.connect(database_url) as conn:
        (old_id,) = conn.execute("SELECT DISTINCT kafka_topic_id FROM transactions").fetchone() or (None,)
    # Under the running consumer, the topic goes and comes back thirty times longer than the old positions.
    delete_topics(kafka.bootstrap, topic)
    produce_noisy(env, pipeline, second, 9000, seed=9, partitions=PARTITIONS)
    wait_until(_settle(kafka, database_url, unique), timeout=120, what="the new incarnation to be written")
    consumed = _sample(consumer, f'microbatch_messages_consumed_total{{topic="{topic}"}}')
    assert consumer.terminate() == 0
    # The premise: the new topic was read at the old offsets first (what is read there is read twice).
    assert consumed > len(read_ledger([first, second])), consumed
    with psycopg.connect(database_url) as conn:
        query = "SELECT kafka_topic_id, count(*) FROM transactions GROUP BY 1"
        rows: dict[str, int] = dict(conn.execute(query).fetchall())
    assert old_id is not None and set(rows) - {old_id}, rows
    (new_id,) = set(rows) - {old_id}
    assert rows == {old_id: _good(first), new_id: _good(second)}, "each message once, stamped with its own topic ID"
    # Each partition placed on the new topic once, however it was noticed (a write's check, the background
    # check, or a fetch the new topic refused while it was still shorter than the old positions).
    events = _events(database_url, f"group-{unique}")
    assert sorted(p for _, p, kind, *_ in events if kind == "topic_recreated") == list(range(PARTITIONS)), events
    assert "topic ID changed under the running consumer" in consumer.output()


def test_records_read_before_a_pause_keep_their_topic_id_when_the_topic_is_re_created_before_the_retry(
    kafka: KafkaService, own_postgres: PostgresServer, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    """The first write of what was read during a PostgreSQL outage confirmed its incarnation before it
    failed; the topic is re-created while it waits: the retry writes those records stamped with the old
    ID (the broker deleted them: nothing else holds them), then the new topic from its start."""
    topic, group = f"invoices-{unique}", f"group-{unique}"
    # A window open 3 s: the 300 produced during the outage are all read before its first write fails
    # (every partition is paused then, and what is produced later is deleted with the topic).
    env = {**_env(service_env, MICROBATCH_MAX_WAIT_MS="3000"), "DATABASE_URL": own_postgres.url}
    pipeline = coordinates_pipeline(invoice_pipeline, tmp_path, with_topic_id=True)
    assert run_cli(env, "init-db", "--pipeline", str(pipeline)).returncode == 0
    ledgers = [tmp_path / "first.jsonl", tmp_path / "during.jsonl", tmp_path / "second.jsonl"]
    produce_noisy(env, pipeline, ledgers[0], 600, seed=11, partitions=PARTITIONS)
    consumer = consumer_factory(env, pipeline)

    def settled() -> bool:
        return caught_up(own_postgres.url, group, kafka.bootstrap, topic, PARTITIONS)

    wait_until(settled, timeout=90, what="the first messages to be written")
    consumed = f'microbatch_messages_consumed_total{{topic="{topic}"}}'
    read_before = _sample(consumer, consumed)
    own_postgres.stop("fast")
    produce_noisy(env, pipeline, ledgers[1], 300, seed=12, partitions=PARTITIONS)
    wait_until(lambda: "flush failed (transient)" in consumer.output(), timeout=60, what="a write to fail")
    wait_until(lambda: _sample(consumer, consumed) >= read_before + 300, timeout=30, what="the 300 to be read")
    delete_topics(kafka.bootstrap, topic)
    produce_noisy(env, pipeline, ledgers[2], 6000, seed=13, partitions=PARTITIONS)
    own_postgres.start()
    wait_until(settled, timeout=120, what="the retry, then the new topic, to be written")
    assert consumer.terminate() == 0
    with psycopg.connect(own_postgres.url) as conn:
        query = "SELECT kafka_topic_id, count(*) FROM transactions GROUP BY 1 ORDER BY min(ingested_at)"
        rows = [(str(r[0]), int(r[1])) for r in conn.execute(query)]
    assert [n for _, n in rows] == [_good(ledgers[0]) + _good(ledgers[1]), _good(ledgers[2])], rows


def test_log_facts_tells_a_topic_that_does_not_exist_from_one_it_could_not_describe(
    kafka: KafkaService, unique: str
) -> None:
    topic = f"facts-{unique}"
    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, 1)
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"facts-{unique}"})
    try:
        facts = LogFacts(AdminClient({"bootstrap.servers": kafka.bootstrap}), consumer)
        found = facts.topic_ids([topic, f"missing-{unique}"], gone="gone")
        assert found[f"missing-{unique}"] == "gone" and found[topic] not in (None, "gone"), found
        assert facts.topic_ids([f"missing-{unique}"]) == {f"missing-{unique}": None}, "None unless asked otherwise"
        nobody = LogFacts(AdminClient({"bootstrap.servers": "127.0.0.1:1", "log_level": 0}), consumer, timeout_s=1.0)
        assert nobody.topic_ids([topic], gone="gone") == {topic: None}, "no answer is not 'does not exist'"
    finally:
        consumer.close()
