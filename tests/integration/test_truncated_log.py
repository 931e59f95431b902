"""A log truncated below the stored position, then written again, against a real broker: the broker
on one replica loses the tail of a partition (killed, its log cut at a batch boundary), comes back in
a new leader epoch, and producers write past the old end. The topic ID and the log's bounds look as
before; only the stored leader epoch shows that the offsets from the cut on hold other messages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from devstack.kafka_server import KafkaServer
from devstack.verify import caught_up, high_watermarks
from pipeline.offsets import OffsetsTable, StoredPosition
from tests.support.consumer_process import ConsumerProcess, run_cli
from tests.support.dead_letters import create_topic, produce_noisy
from tests.support.invoice_rules import judge
from tests.support.kafka_io import port_of, sample
from tests.support.log_surgery import cut_partition_log
from tests.support.oracle import check, entry_bytes, read_ledger
from tests.support.services import wait_until


def _stored(database_url: str, group: str) -> tuple[int, int | None]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT next_offset, CASE WHEN leader_epoch_offset = next_offset THEN leader_epoch END "
            "FROM microbatch_offsets WHERE consumer_group = %s",
            (group,),
        ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


@pytest.mark.parametrize("mode", ["restarted", "running", "short"])
def test_a_log_truncated_and_written_again_is_read_from_where_it_diverged(
    own_kafka: KafkaServer, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path, mode: str,
) -> None:  # fmt: skip
    """`restarted`: the consumer is stopped while the broker loses the tail, and seeks with the stored
    epoch when it starts. `running`: it stays up through the broker's death and return (whichever
    notices first, librdkafka's own check when the leader epoch changes or a placement after the
    session expired, must read from where the log diverged). `short`: it starts while the log is
    written again only part of the way (the stored position is beyond its end, and with
    on_position_gap = skip the gap's resume point would skip what was written meanwhile); the rest
    comes after."""
    topic, group, running = f"invoices-{unique}", f"group-{unique}", mode == "running"
    env = {**service_env, "KAFKA_BOOTSTRAP_SERVERS": own_kafka.bootstrap, "MICROBATCH_MAX_WAIT_MS": "200"}
    if mode == "short":  # what skip would have skipped; the other cases run with the default (halt)
        env["MICROBATCH_ON_POSITION_GAP"] = "skip"
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    create_topic(own_kafka.bootstrap, topic, 1)
    kept, lost, refill = tmp_path / "kept.jsonl", tmp_path / "lost.jsonl", tmp_path / "refill.jsonl"
    produce_noisy(env, invoice_pipeline, kept, 300, seed=11, partitions=1)
    cut_at = high_watermarks(own_kafka.bootstrap, topic, 1)[(topic, 0)]
    produce_noisy(env, invoice_pipeline, lost, 300, seed=12, partitions=1)  # own producer: batches start at cut_at
    consumer = consumer_factory(env, invoice_pipeline)
    caught = lambda: caught_up(database_url, group, own_kafka.bootstrap, topic, 1)  # noqa: E731
    wait_until(caught, timeout=90, what="the first stream to be written")
    if not running:
        assert consumer.terminate() == 0
    written, epoch = _stored(database_url, group)
    assert written > cut_at and epoch is not None, "the position is stored with its record's leader epoch"

    ends_at = cut_partition_log(own_kafka, topic, 0, cut_at)
    assert ends_at == cut_at and high_watermarks(own_kafka.bootstrap, topic, 1)[(topic, 0)] == cut_at
    part = tmp_path / "part.jsonl"
    if mode == "short":
        produce_noisy(env, invoice_pipeline, part, 100, seed=14, partitions=1)
        assert cut_at < high_watermarks(own_kafka.bootstrap, topic, 1)[(topic, 0)] < written
        consumer = consumer_factory(env, invoice_pipeline)
        wait_until(lambda: "reading them from" in consumer.output(), timeout=60, what="the truncation found")
    produce_noisy(env, invoice_pipeline, refill, 400, seed=13, partitions=1)
    high = high_watermarks(own_kafka.bootstrap, topic, 1)[(topic, 0)]
    assert high > written, "the log is written again past the stored position: its bounds show nothing"

    if mode == "restarted":
        consumer = consumer_factory(env, invoice_pipeline)
    wait_until(caught, timeout=90, what="the written-again log to be read")
    assert consumer.terminate() == 0
    output = consumer.output()
    assert "Traceback" not in output, output[-2000:]
    assert f"{topic}[0] offsets {cut_at}..{written - 1}" in output, output[-3000:]
    with psycopg.connect(database_url) as conn:
        events = conn.execute(
            "SELECT kind, old_position, new_position FROM microbatch_position_events WHERE consumer_group = %s "
            "AND kind = 'log_truncated'",
            (group,),
        ).fetchall()
    assert events == [("log_truncated", written, cut_at)], events
    # Every message written, once: those Kafka lost were written before it lost them; those that
    # replaced them (at the same offsets) too. Dead letters of the lost ones are in the dead-letter topic.
    verdict = check(read_ledger([kept, lost, part, refill]), database_url, own_kafka.bootstrap, topic,
                    f"{topic}.dlq", group, 1)  # fmt: skip
    assert verdict.ok, verdict.details


def test_own_tables_of_version_2_gain_the_leader_epoch_and_an_epoch_left_behind_is_not_used(
    database_url: str, service_env: dict[str, str], invoice_pipeline: Path, unique: str
) -> None:
    group = f"group-{unique}"
    assert run_cli(service_env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    with psycopg.connect(database_url, autocommit=True) as conn:  # what microbatch's schema version 2 left
        conn.execute("ALTER TABLE microbatch_offsets DROP COLUMN leader_epoch, DROP COLUMN leader_epoch_offset")
        conn.execute("UPDATE microbatch_schema_version SET version = 2 WHERE table_name = 'microbatch_offsets'")
    upgraded = run_cli(service_env, "init-db", "--pipeline", str(invoice_pipeline))
    added = "from schema version 2 to 3: added leader_epoch, leader_epoch_offset"
    assert upgraded.returncode == 0 and added in upgraded.stdout, upgraded.stdout
    table, pid = OffsetsTable("public", "microbatch_offsets", group), ("orders", 0)
    with psycopg.connect(database_url, autocommit=True) as conn:
        table.compare_and_set(conn, {pid: None}, {pid: 100}, {pid: "AAAAAAAAAAAAAAAAAAAAAA"}, {pid: 4})()
        assert table.read(conn, [pid]) == {pid: StoredPosition(100, "AAAAAAAAAAAAAAAAAAAAAA", 4)}
        # A consumer of version 2 moves the position and leaves the epoch behind: it no longer applies.
        conn.execute("UPDATE microbatch_offsets SET next_offset = 150 WHERE consumer_group = %s", (group,))
        assert table.read(conn, [pid]) == {pid: StoredPosition(150, "AAAAAAAAAAAAAAAAAAAAAA", None)}
        table.compare_and_set(conn, {pid: 150}, {pid: 180}, {}, {pid: 6})()
        assert table.read(conn, [pid])[pid].leader_epoch == 6
        table.move(conn, {pid: 170})  # a prefix of a batch: the batch's last epoch is not this position's
        assert table.read(conn, [pid]) == {pid: StoredPosition(170, "AAAAAAAAAAAAAAAAAAAAAA", None)}


def test_a_pipeline_deduplicated_by_offset_halts_on_a_truncated_log_until_an_operator_moves_the_position(
    own_kafka: KafkaServer, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic, group = f"invoices-{unique}", f"group-{unique}"
    env = {**service_env, "KAFKA_BOOTSTRAP_SERVERS": own_kafka.bootstrap, "MICROBATCH_MAX_WAIT_MS": "200",
           "MICROBATCH_HALTED_RETRY_S": "1"}  # fmt: skip
    text = invoice_pipeline.read_text().replace(
        'dedupe_key = ["event_id"]', 'dedupe_key = ["kafka_topic", "kafka_partition", "kafka_offset"]'
    )
    pipeline = tmp_path / "coordinates.toml"
    pipeline.write_text(text)
    assert run_cli(env, "init-db", "--pipeline", str(pipeline)).returncode == 0
    create_topic(own_kafka.bootstrap, topic, 1)
    kept, lost, refill = tmp_path / "kept.jsonl", tmp_path / "lost.jsonl", tmp_path / "refill.jsonl"
    produce_noisy(env, pipeline, kept, 300, seed=21, partitions=1)
    cut_at = high_watermarks(own_kafka.bootstrap, topic, 1)[(topic, 0)]
    produce_noisy(env, pipeline, lost, 300, seed=22, partitions=1)
    consumer = consumer_factory(env, pipeline)
    caught = lambda: caught_up(database_url, group, own_kafka.bootstrap, topic, 1)  # noqa: E731
    wait_until(caught, timeout=90, what="the first stream to be written")
    assert consumer.terminate() == 0
    written, _ = _stored(database_url, group)
    assert cut_partition_log(own_kafka, topic, 0, cut_at) == cut_at
    produce_noisy(env, pipeline, refill, 400, seed=23, partitions=1)

    consumer = consumer_factory(env, pipeline)
    port = port_of(consumer)
    wait_until(lambda: sample(port, "microbatch_halted") == 1, timeout=60, what="the consumer to halt")
    assert _stored(database_url, group)[0] == written, "nothing moves while halted"
    assert sample(port, "microbatch_duplicates_skipped_total") == 0, "nothing dropped as a duplicate"
    assert f"{topic}[0] offsets {cut_at}..{written - 1}" in consumer.output(), consumer.output()[-3000:]
    with psycopg.connect(database_url) as conn:
        kinds = conn.execute("SELECT DISTINCT kind FROM microbatch_position_events WHERE consumer_group = %s "
                             "AND kind LIKE 'truncation%%'", (group,)).fetchall()  # fmt: skip
    assert kinds == [("truncation_halted",)], kinds
    # What the halt asks of the operator: the lost messages' rows out of the way, then the position;
    # here above where the log diverged (the operator gives up 50 messages), which must hold.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM transactions WHERE kafka_offset >= %s", (cut_at,))
    resume = cut_at + 50
    reset = run_cli(env, "positions", "reset", "--topic", topic, "--partition", "0", "--to", str(resume),
                    "--pipeline", str(pipeline))  # fmt: skip
    assert reset.returncode == 0, reset.stderr
    wait_until(caught, timeout=90, what="the halted consumer to resume by itself from the new position")
    assert sample(port, "microbatch_halted") == 0
    assert consumer.terminate() == 0
    entries = read_ledger([kept]) + [e for e in read_ledger([refill]) if e["offset"] >= resume]
    good = sum(1 for e in entries if judge(entry_bytes(e, "value")).invoice is not None)
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*), min(kafka_offset) FILTER (WHERE kafka_offset >= %s) FROM transactions",
                           (cut_at,)).fetchone()  # fmt: skip
    assert row is not None and row[0] == good, "every message of the log as it is now, once"
    first = min(
        e["offset"] for e in entries if e["offset"] >= resume and judge(entry_bytes(e, "value")).invoice is not None
    )
    assert row[1] == first, f"read from the reset position {resume}: the first row is at {row[1]}, not {first}"
