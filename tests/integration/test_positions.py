"""Positions you can trust, against a real broker: a re-created topic, a retention gap, a truncated log,
`microbatch positions reset`, and the upgrade of microbatch's own tables."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.produce import ensure_topic
from devstack.verify import caught_up, high_watermarks, stored_positions
from tests.support.consumer_process import ConsumerProcess, run_cli
from tests.support.dead_letters import produce_noisy
from tests.support.invoice_rules import Invoice, judge, totals
from tests.support.kafka_io import metrics_port, scrape
from tests.support.oracle import check, entry_bytes, read_ledger
from tests.support.services import KafkaService, wait_until
from tests.support.user_paths import delete_topics

PARTITIONS = 3


def _events(database_url: str, group: str) -> list[tuple[str, int, str, int | None, int | None, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT topic, partition, kind, old_position, new_position, detail FROM microbatch_position_events "
            "WHERE consumer_group = %s ORDER BY id",
            (group,),
        ).fetchall()
    return [(str(r[0]), int(r[1]), str(r[2]), r[3], r[4], str(r[5])) for r in rows]


def _readyz(consumer: ConsumerProcess) -> tuple[int, str]:
    port = metrics_port(consumer.output())
    assert port is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def _sample(consumer: ConsumerProcess, name: str) -> float:
    port = metrics_port(consumer.output())
    return -1.0 if port is None else scrape(port).get(name, -1.0)


def _settle(kafka: KafkaService, database_url: str, unique: str) -> Callable[[], bool]:
    topic = f"invoices-{unique}"
    return lambda: caught_up(database_url, f"group-{unique}", kafka.bootstrap, topic, PARTITIONS)


def coordinates_pipeline(invoice_pipeline: Path, tmp_path: Path, *, with_topic_id: bool) -> Path:
    """The invoice pipeline deduplicated by Kafka coordinates, with the topic ID in its raw rows and
    dedupe key or not, written to `tmp_path`."""
    key = '["kafka_topic", "kafka_partition", "kafka_offset"' + (', "kafka_topic_id"]' if with_topic_id else "]")
    text = invoice_pipeline.read_text().replace('dedupe_key = ["event_id"]', f"dedupe_key = {key}")
    if with_topic_id:
        offset = 'kafka_offset = { kafka = "offset" }'
        text = text.replace(offset, offset + '\nkafka_topic_id = { kafka = "topic_id" }')
    pipeline = tmp_path / "coordinates.toml"
    pipeline.write_text(text)
    return pipeline


def _env(service_env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**service_env, "MICROBATCH_HALTED_RETRY_S": "1", "MICROBATCH_MAX_WAIT_MS": "200", **extra}


def test_a_topic_deleted_and_re_created_is_read_from_its_start_with_an_audit_row_per_partition(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic, group, env = f"invoices-{unique}", f"group-{unique}", _env(service_env)
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    produce_noisy(env, invoice_pipeline, first, 6000, seed=1, partitions=PARTITIONS)
    consumer = consumer_factory(env, invoice_pipeline)
    wait_until(_settle(kafka, database_url, unique), timeout=90, what="the first incarnation to be written")
    assert consumer.terminate() == 0
    delete_topics(kafka.bootstrap, topic)
    # It re-creates the topic: offsets start at 0 again.
    produce_noisy(env, invoice_pipeline, second, 9000, seed=2, partitions=PARTITIONS)
    assert all(mark < 6000 // PARTITIONS * 2 for mark in high_watermarks(kafka.bootstrap, topic, PARTITIONS).values())
    consumer = consumer_factory(env, invoice_pipeline)
    wait_until(_settle(kafka, database_url, unique), timeout=90, what="the new incarnation to be written")
    resets = _sample(consumer, 'microbatch_position_resets_total{reason="topic_recreated"}')
    assert consumer.terminate() == 0
    # Every good event of both incarnations is written once, and counted once (the incarnations reuse
    # coordinates, so events are matched by their id here, and totals computed over both).
    invoices: dict[str, Invoice] = {}
    for entry in read_ledger([first, second]):
        judged = judge(entry_bytes(entry, "value"))
        if judged.invoice is not None:
            invoices.setdefault(str(judged.invoice.event_id), judged.invoice)
    with psycopg.connect(database_url) as conn:
        written = [str(row[0]) for row in conn.execute("SELECT event_id FROM transactions")]
        inventory = {str(r[0]): int(r[1]) for r in conn.execute("SELECT item_id, quantity FROM inventory")}
    assert sorted(written) == sorted(invoices), "every good event of both incarnations, once"
    assert inventory == {item: held for item, (held, _) in totals(invoices.values()).inventory.items()}
    events = [e for e in _events(database_url, group) if e[2] == "topic_recreated"]
    assert sorted(e[1] for e in events) == list(range(PARTITIONS))
    assert all(e[3] is not None and e[3] > 0 and e[4] == 0 for e in events), events
    assert resets == PARTITIONS
    warned = [line for line in consumer.output().splitlines() if "topic_recreated" in line and "WARNING" in line]
    assert len(warned) == PARTITIONS


def test_a_retention_gap_halts_naming_the_range_until_positions_reset_then_every_survivor_is_written(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic, group, env = f"invoices-{unique}", f"group-{unique}", _env(service_env)
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    ledgers = [tmp_path / "first.jsonl", tmp_path / "second.jsonl"]
    produce_noisy(env, invoice_pipeline, ledgers[0], 3000, seed=3, partitions=PARTITIONS)
    consumer = consumer_factory(env, invoice_pipeline)
    wait_until(_settle(kafka, database_url, unique), timeout=90, what="the first batch to be written")
    assert consumer.terminate() == 0
    produce_noisy(env, invoice_pipeline, ledgers[1], 3000, seed=4, partitions=PARTITIONS)
    # Retention runs while the consumer is stopped: half of what it has not read yet is deleted.
    stored = {p: _stored(database_url, group, topic, p) for p in range(PARTITIONS)}
    high = high_watermarks(kafka.bootstrap, topic, PARTITIONS)
    cut = {p: stored[p] + (high[(topic, p)] - stored[p]) // 2 for p in range(PARTITIONS)}
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for future in admin.delete_records([TopicPartition(topic, p, cut[p]) for p in range(PARTITIONS)]).values():
        future.result(timeout=30)
    consumer = consumer_factory(env, invoice_pipeline)
    wait_until(lambda: _sample(consumer, "microbatch_halted") == 1, timeout=60, what="the consumer to halt")
    status, body = _readyz(consumer)
    assert status == 503 and f"{topic}[" in body and "were deleted before they were written" in body, body
    ranges = set(re.findall(rf"{re.escape(topic)}\[(\d+)\] offsets (\d+)\.\.(\d+)", consumer.output()))
    named = {(int(p), int(a), int(b)) for p, a, b in ranges}
    assert named == {(p, stored[p], cut[p] - 1) for p in range(PARTITIONS)}, "each partition's deleted range, exactly"
    assert _sample(consumer, 'microbatch_position_gaps_total{action="halt"}') == PARTITIONS
    held = {p: _stored(database_url, group, topic, p) for p in range(PARTITIONS)}
    assert held == stored, "nothing moves while halted"
    dry = run_cli(env, "positions", "reset", "--topic", topic, "--to", "earliest", "--pipeline", str(invoice_pipeline),
                  "--dry-run")  # fmt: skip
    assert dry.returncode == 0 and "would move" in dry.stdout, dry.stdout + dry.stderr
    assert {p: _stored(database_url, group, topic, p) for p in range(PARTITIONS)} == stored
    reset = run_cli(env, "positions", "reset", "--topic", topic, "--to", "earliest", "--pipeline",
                    str(invoice_pipeline))  # fmt: skip
    assert reset.returncode == 0, reset.stderr
    assert f"{topic}[0]: {stored[0]} → {cut[0]}" in reset.stdout and "are running" in reset.stdout, reset.stdout
    wait_until(_settle(kafka, database_url, unique), timeout=90, what="the consumer to resume by itself")
    assert _sample(consumer, "microbatch_halted") == 0
    assert consumer.terminate() == 0
    survivors = [
        e for e in read_ledger(ledgers) if e["offset"] < stored[e["partition"]] or e["offset"] >= cut[e["partition"]]
    ]
    verdict = check(survivors, database_url, kafka.bootstrap, topic, f"{topic}.dlq", group, PARTITIONS)
    assert verdict.ok, verdict.details
    kinds = [(e[1], e[2]) for e in _events(database_url, group) if e[2] in {"gap_halted", "reset"} and e[3] is not None]
    assert sorted(kinds) == sorted(
        [(p, "gap_halted") for p in range(PARTITIONS)] + [(p, "reset") for p in range(PARTITIONS)]
    )


def test_with_skip_a_gap_is_skipped_and_the_audit_rows_are_the_deleted_ranges(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic, group = f"invoices-{unique}", f"group-{unique}"
    env = _env(service_env, MICROBATCH_ON_POSITION_GAP="skip")
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, PARTITIONS)
    produce_noisy(env, invoice_pipeline, tmp_path / "ledger.jsonl", 3000, seed=5, partitions=PARTITIONS)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    # The group has stored positions at 0 (as if it had started long ago), and retention deleted 0..99.
    with psycopg.connect(database_url, autocommit=True) as conn:
        for p in range(PARTITIONS):
            conn.execute("INSERT INTO microbatch_offsets (consumer_group, topic, partition, next_offset) "
                         "VALUES (%s, %s, %s, 0)", (group, topic, p))  # fmt: skip
    for future in admin.delete_records([TopicPartition(topic, p, 100) for p in range(PARTITIONS)]).values():
        future.result(timeout=30)
    consumer = consumer_factory(env, invoice_pipeline)
    wait_until(_settle(kafka, database_url, unique), timeout=90, what="the consumer to skip and catch up")
    assert _sample(consumer, 'microbatch_position_gaps_total{action="skip"}') == PARTITIONS
    assert _sample(consumer, "microbatch_halted") == 0
    assert consumer.terminate() == 0
    skipped = [(e[1], e[3], e[4]) for e in _events(database_url, group) if e[2] == "gap_skipped"]
    assert sorted(skipped) == [(p, 0, 100) for p in range(PARTITIONS)]
    assert all("offsets 0..99" in e[5] for e in _events(database_url, group) if e[2] == "gap_skipped")


def test_a_stored_position_beyond_the_end_of_the_log_halts(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic, group, env = f"invoices-{unique}", f"group-{unique}", _env(service_env)
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    produce_noisy(env, invoice_pipeline, tmp_path / "ledger.jsonl", 600, seed=6, partitions=PARTITIONS)
    high = high_watermarks(kafka.bootstrap, topic, PARTITIONS)
    with psycopg.connect(database_url, autocommit=True) as conn:  # a truncated log (unclean leader election)
        for p in range(PARTITIONS):
            conn.execute("INSERT INTO microbatch_offsets (consumer_group, topic, partition, next_offset) "
                         "VALUES (%s, %s, %s, %s)", (group, topic, p, high[(topic, p)] + 500))  # fmt: skip
    consumer = consumer_factory(env, invoice_pipeline)
    wait_until(lambda: _sample(consumer, "microbatch_halted") == 1, timeout=60, what="the consumer to halt")
    status, body = _readyz(consumer)
    assert status == 503 and "beyond the end of the log" in body, body
    reset = run_cli(env, "positions", "reset", "--topic", topic, "--to", "latest", "--pipeline", str(invoice_pipeline))
    assert reset.returncode == 0, reset.stderr
    wait_until(lambda: _sample(consumer, "microbatch_halted") == 0, timeout=60, what="the consumer to resume")
    assert consumer.terminate() == 0


def test_own_tables_of_an_older_version_are_refused_then_upgraded_in_place(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic, group, env = f"invoices-{unique}", f"group-{unique}", _env(service_env)
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    produce_noisy(env, invoice_pipeline, tmp_path / "ledger.jsonl", 900, seed=7, partitions=PARTITIONS)
    with psycopg.connect(database_url, autocommit=True) as conn:  # what microbatch's schema version 1 left
        conn.execute("DROP TABLE microbatch_schema_version, microbatch_position_events")
        conn.execute("ALTER TABLE microbatch_offsets DROP COLUMN topic_id, DROP COLUMN leader_epoch, "
                     "DROP COLUMN leader_epoch_offset")  # fmt: skip
        for p in range(PARTITIONS):
            conn.execute("INSERT INTO microbatch_offsets (consumer_group, topic, partition, next_offset) "
                         "VALUES (%s, %s, %s, 0)", (group, topic, p))  # fmt: skip
    # The consumer waits for an init-db job to upgrade them (rolling upgrades); here it gives up at once.
    refused = run_cli({**env, "MICROBATCH_STARTUP_TIMEOUT_S": "1"}, "run", "--pipeline", str(invoice_pipeline))
    assert refused.returncode == 4
    assert "run `microbatch init-db` to upgrade microbatch's own tables" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    upgraded = run_cli(env, "init-db", "--pipeline", str(invoice_pipeline))
    added = "from schema version 1 to 3: added topic_id, leader_epoch, leader_epoch_offset"
    assert upgraded.returncode == 0 and added in upgraded.stdout, upgraded.stdout
    again = run_cli(env, "init-db", "--pipeline", str(invoice_pipeline))
    assert again.returncode == 0 and "schema version" not in again.stdout, "init-db is idempotent"
    consumer = consumer_factory(env, invoice_pipeline)
    wait_until(_settle(kafka, database_url, unique), timeout=90, what="the consumer to catch up")
    assert consumer.terminate() == 0
    adopted = [e for e in _events(database_url, group) if e[2] == "adopted_topic_id"]
    assert sorted(e[1] for e in adopted) == list(range(PARTITIONS)) and all(e[3] == e[4] == 0 for e in adopted)
    with psycopg.connect(database_url) as conn:
        ids = {
            row[0]
            for row in conn.execute("SELECT topic_id FROM microbatch_offsets WHERE consumer_group = %s", (group,))
        }
    assert len(ids) == 1 and None not in ids


def _stored(database_url: str, group: str, topic: str, partition: int) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT next_offset FROM microbatch_offsets WHERE consumer_group = %s AND topic = %s AND partition = %s",
            (group, topic, partition),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_positions_reset_refuses_a_mistake_in_one_clear_line(
    kafka: KafkaService, service_env: dict[str, str], invoice_pipeline: Path, unique: str
) -> None:
    assert run_cli(service_env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    for argv, fragment in (
        (["--topic", f"missing-{unique}", "--to", "earliest"], f"topic missing-{unique} does not exist"),
        (["--topic", "x", "--to", "yesterday"], "--to 'yesterday': use earliest, latest, an offset"),
    ):
        result = run_cli(service_env, "positions", "reset", *argv, "--pipeline", str(invoice_pipeline))
        assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr, result.stderr
    # The broker creates topics on request (auto.create.topics.enable, its default): a typo must not.
    assert f"missing-{unique}" not in AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=10).topics


@pytest.mark.parametrize("with_topic_id", [False, True], ids=["coordinates only", "coordinates and topic_id"])
def test_a_pipeline_deduplicated_by_coordinates_halts_on_a_re_created_topic_unless_its_key_has_the_topic_id(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path, with_topic_id: bool,
) -> None:  # fmt: skip
    topic, env = f"invoices-{unique}", _env(service_env)
    pipeline = coordinates_pipeline(invoice_pipeline, tmp_path, with_topic_id=with_topic_id)
    assert run_cli(env, "init-db", "--pipeline", str(pipeline)).returncode == 0
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    produce_noisy(env, pipeline, first, 1500, seed=8, partitions=PARTITIONS)
    consumer = consumer_factory(env, pipeline)
    wait_until(_settle(kafka, database_url, unique), timeout=90, what="the first incarnation to be written")
    assert consumer.terminate() == 0
    before, positions = _rows(database_url), stored_positions(database_url, f"group-{unique}")
    assert len(positions) == PARTITIONS, positions
    delete_topics(kafka.bootstrap, topic)
    produce_noisy(env, pipeline, second, 1500, seed=9, partitions=PARTITIONS)
    consumer = consumer_factory(env, pipeline)
    if not with_topic_id:
        wait_until(lambda: _sample(consumer, "microbatch_halted") == 1, timeout=60, what="the consumer to halt")
        status, body = _readyz(consumer)
        assert status == 503 and "re-created" in body and "topic_id" in body, body
        # Every partition halts: none is reset to the new incarnation, whose messages would be taken
        # for duplicates of the old rows (ON CONFLICT DO NOTHING leaves the row count as it was).
        assert stored_positions(database_url, f"group-{unique}") == positions, "no partition moves while halted"
        assert _sample(consumer, "microbatch_duplicates_skipped_total") == 0, "nothing dropped as a duplicate"
        assert _rows(database_url) == before, "nothing of the new incarnation is written"
        assert consumer.terminate() == 0, "nothing was buffered: a halted consumer leaves cleanly"
        return
    wait_until(_settle(kafka, database_url, unique), timeout=90, what="the new incarnation to be written")
    assert consumer.terminate() == 0
    # A restart against the stored rows (same incarnation) reads the topic ID again for its rows.
    third = tmp_path / "third.jsonl"
    produce_noisy(env, pipeline, third, 900, seed=10, partitions=PARTITIONS)
    consumer = consumer_factory(env, pipeline)
    wait_until(_settle(kafka, database_url, unique), timeout=90, what="the restarted consumer to catch up")
    assert consumer.terminate() == 0
    good = sum(1 for e in read_ledger([second, third]) if judge(entry_bytes(e, "value")).invoice is not None)
    assert _rows(database_url) == before + good, "every message of the new incarnation is written"
    with psycopg.connect(database_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT DISTINCT kafka_topic_id FROM transactions")]
    assert len(ids) == 2, "the rows of each incarnation carry its topic ID"


def _rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM transactions").fetchone()
    return int(row[0]) if row else 0
