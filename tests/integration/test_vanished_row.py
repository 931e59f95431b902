"""A database restored from before a partition's row existed, under a running consumer that took the
partition over from an earlier one: what the database lost predates this consumer's ownership, and
with auto_offset_reset = earliest every message must be written again, once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg

from devstack.verify import caught_up
from tests.support.consumer_process import ConsumerProcess, run_cli
from tests.support.dead_letters import create_topic, produce_noisy
from tests.support.oracle import check, read_ledger
from tests.support.services import KafkaService, wait_until


def _audited(database_url: str, group: str) -> list[tuple[int, str]]:
    """The audit rows of placements without a stored row made after the first one: (new position, detail)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT new_position, detail FROM microbatch_position_events WHERE consumer_group = %s "
            "AND kind = 'reset' AND new_position IS NOT NULL ORDER BY id OFFSET 1",
            (group,),
        ).fetchall()
    return [(int(position), str(detail)) for position, detail in rows]


def test_a_row_lost_in_a_restore_is_read_again_from_the_log_start_with_everything_it_held(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    topic, group = f"invoices-{unique}", f"group-{unique}"
    env = {**service_env, "MICROBATCH_MAX_WAIT_MS": "200"}
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    create_topic(kafka.bootstrap, topic, 1)
    caught = lambda: caught_up(database_url, group, kafka.bootstrap, topic, 1)  # noqa: E731
    ledgers = [tmp_path / f"part{n}.jsonl" for n in range(3)]

    produce_noisy(env, invoice_pipeline, ledgers[0], 300, seed=31, partitions=1)
    earlier = consumer_factory(env, invoice_pipeline)  # an earlier process writes the first part
    wait_until(caught, timeout=90, what="the first part to be written")
    assert earlier.terminate() == 0
    consumer = consumer_factory(env, invoice_pipeline)  # this one's ownership starts after it
    produce_noisy(env, invoice_pipeline, ledgers[1], 300, seed=32, partitions=1)
    wait_until(caught, timeout=90, what="the second part to be written")

    # The restore: a backup from before the partition's row existed (every table as init-db left it),
    # and the consumer's connections lost with the server it had. It reads the stored positions back
    # once it has connected again, before anything new arrives.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE transactions, inventory, item_sales_daily")
        conn.execute("DELETE FROM microbatch_offsets WHERE consumer_group = %s", (group,))
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND pid <> pg_backend_pid()")  # fmt: skip
    wait_until(lambda: _audited(database_url, group) != [], timeout=60, what="the lost row to be found")
    produce_noisy(env, invoice_pipeline, ledgers[2], 100, seed=33, partitions=1)
    wait_until(caught, timeout=90, what="everything to be written again")
    assert consumer.terminate() == 0
    assert "Traceback" not in consumer.output(), consumer.output()[-2000:]
    # A bad message read again after the restore is dead-lettered again: two copies at most.
    verdict = check(read_ledger(ledgers), database_url, kafka.bootstrap, topic, f"{topic}.dlq", group, 1,
                    dead_letter_copies_allowed=2)  # fmt: skip
    assert verdict.ok, verdict.details
    ((new_position, detail),) = _audited(database_url, group)
    assert new_position == 0 and "the stored row vanished" in detail and "(300)" in detail, detail
