"""A fetch the broker refuses while the write of that partition's records fails, against a real broker
and PostgreSQL: the topic is deleted and re-created shorter under a write in flight, and the
database goes down before that write commits.

The refusal (offset out of range) places the partition again, which drops its buffered records. The
failed write's records are pending then, waiting for their retry; dropped, they would be read again
from a broker that no longer holds them (the old topic is gone): lost, every one of them, before
consumer/refusals.py. The refusal now waits until the retry has written them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg

from devstack.postgres_server import PostgresServer
from tests.integration.test_positions import PARTITIONS, _env, _sample, _settle
from tests.support.consumer_process import ConsumerProcess, run_cli
from tests.support.dead_letters import produce_noisy
from tests.support.invoice_rules import judge
from tests.support.oracle import entry_bytes, read_ledger
from tests.support.services import KafkaService, wait_until
from tests.support.user_paths import delete_topics

# Every write holds its transaction open this long before COMMIT: the window in which the topic is
# re-created and the database stopped, with the records read before in flight.
WRITE_HOLD_MS = 6000


def _good_events(*ledgers: Path) -> set[uuid.UUID]:
    """The event IDs the ledgers' valid messages carry (the invoice pipeline writes each once)."""
    judged = (judge(entry_bytes(entry, "value")) for entry in read_ledger(ledgers))
    return {judgement.invoice.event_id for judgement in judged if judgement.invoice is not None}


def test_records_of_a_failed_write_are_written_by_its_retry_when_their_partitions_fetch_is_refused_meanwhile(
    kafka: KafkaService, own_postgres: PostgresServer, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic = f"invoices-{unique}"
    env = {
        **_env(service_env, MICROBATCH_MAX_WAIT_MS="500", MICROBATCH_FAILPOINTS=f"before_commit:sleep:{WRITE_HOLD_MS}"),
        "DATABASE_URL": own_postgres.url,
    }
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    first, during, second = tmp_path / "first.jsonl", tmp_path / "during.jsonl", tmp_path / "second.jsonl"
    produce_noisy(env, invoice_pipeline, first, 600, seed=21, partitions=PARTITIONS)
    consumer = consumer_factory(env, invoice_pipeline)
    settled = _settle(kafka, own_postgres.url, unique)
    wait_until(settled, timeout=90, what="the first messages to be written")
    consumed = f'microbatch_messages_consumed_total{{topic="{topic}"}}'
    read_before = _sample(consumer, consumed)
    produce_noisy(env, invoice_pipeline, during, 300, seed=22, partitions=PARTITIONS)
    # Read, and handed to the writer (nothing buffered any more): the write of the 300 is in flight.
    wait_until(lambda: _sample(consumer, consumed) >= read_before + 300, timeout=30, what="the 300 to be read")
    wait_until(lambda: _sample(consumer, "microbatch_buffered_records") == 0, timeout=30, what="their write")
    # Under that write, the topic comes back shorter than the positions read (the next fetch is refused
    # as out of range), and the database goes down (the write fails at its COMMIT).
    delete_topics(kafka.bootstrap, topic)
    produce_noisy(env, invoice_pipeline, second, 30, seed=23, partitions=PARTITIONS)
    own_postgres.stop("fast")
    wait_until(lambda: "flush failed (transient)" in consumer.output(), timeout=60, what="the write to fail")
    own_postgres.start()
    wait_until(settled, timeout=120, what="the retry, then the new topic, to be written")
    output = consumer.output()
    assert consumer.terminate() == 0
    with psycopg.connect(own_postgres.url) as conn:
        written = [row[0] for row in conn.execute("SELECT event_id FROM transactions")]
    assert len(written) == len(set(written)), "each event once"
    expected = _good_events(first, during, second)
    assert set(written) == expected, f"{len(expected - set(written))} missing, {len(set(written) - expected)} extra"
    # The premise: the broker refused a fetch of the topic while the write's records waited for their
    # retry (not only the background check noticed the new topic).
    assert "acted on once the retry wrote what was read before" in output, output[-3000:]
