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

from tests.integration.test_positions import PARTITIONS, _env, _events, _settle, coordinates_pipeline
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
    produce_noisy(env, pipeline, first, 1500, seed=8, partitions=PARTITIONS)
    consumer = consumer_factory(env, pipeline)
    wait_until(_settle(kafka, database_url, unique), timeout=90, what="the first incarnation to be written")
    with psycopg.connect(database_url) as conn:
        (old_id,) = conn.execute("SELECT DISTINCT kafka_topic_id FROM transactions").fetchone() or (None,)
    # Under the running consumer, the topic goes and comes back six times longer than the old positions.
    delete_topics(kafka.bootstrap, topic)
    produce_noisy(env, pipeline, second, 9000, seed=9, partitions=PARTITIONS)
    wait_until(_settle(kafka, database_url, unique), timeout=120, what="the new incarnation to be written")
    assert consumer.terminate() == 0
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
