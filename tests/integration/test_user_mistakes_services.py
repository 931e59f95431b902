"""User mistakes only a real broker or database shows, refused in one clear line (exit 2), never a
traceback: `positions reset --to` an offset outside the partition's log, and a schema version table
made by hand whose version is not an integer; check-config names a transform hook that does not load, and
`run` says so at once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from devstack.verify import high_watermarks, stored_positions
from pipeline.spec_loader import builtin_dir
from tests.support.consumer_process import run_cli
from tests.support.services import KafkaService
from tests.support.user_paths import init_db

PARTITIONS = 3


def _one_line_refusal(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    err = result.stderr
    assert result.returncode == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("microbatch: error: ") and fragment in err, err


def test_positions_reset_refuses_an_offset_outside_the_log_and_takes_its_bounds(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path, unique: str
) -> None:
    topic, group = f"invoices-{unique}", f"group-{unique}"
    init_db(service_env, invoice_pipeline)
    produced = run_cli(service_env, "produce", "--pipeline", str(invoice_pipeline), "--count", "300",
                       "--partitions", str(PARTITIONS))  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for future in admin.delete_records([TopicPartition(topic, 1, 5)]).values():  # the log of [1] starts at 5
        future.result(timeout=30)
    high = {p: mark for (_, p), mark in high_watermarks(kafka.bootstrap, topic, PARTITIONS).items()}
    assert high[1] > 5, high

    def reset(*argv: str) -> subprocess.CompletedProcess[str]:
        return run_cli(service_env, "positions", "reset", "--topic", topic, *argv, "--pipeline", str(invoice_pipeline))

    beyond = f"is outside the log of {topic}[0] (0..{high[0]}, {high[0]} being its end): give an offset in that "
    for argv, fragment in (
        (["--partition", "0", "--to", str(high[0] + 1)], f"offset {high[0] + 1} {beyond}"),
        (["--partition", "0", "--to", str(high[0] + 1), "--dry-run"], f"offset {high[0] + 1} {beyond}"),
        (["--partition", "0", "--to", "9223372036854775807", "--dry-run"], f"offset 9223372036854775807 {beyond}"),
        (["--partition", "0", "--to", "1" * 30], f"offset {'1' * 30} {beyond}"),
        (["--to", str(max(high.values()) + 1)], f"{beyond}range, or earliest or latest"),
        (["--partition", "1", "--to", "4"], f"offset 4 is outside the log of {topic}[1] (5..{high[1]}, "),
    ):
        _one_line_refusal(reset(*argv), fragment)
    assert stored_positions(database_url, group) == {}, "a refused reset writes nothing"
    # Both ends of the log are positions: its start, and its end (nothing left to read).
    at_end = reset("--partition", "0", "--to", str(high[0]))
    assert at_end.returncode == 0, at_end.stderr
    assert f"{topic}[0]: no stored position → {high[0]} (log 0..{high[0]}) moved" in at_end.stdout, at_end.stdout
    at_start = reset("--partition", "1", "--to", "5")
    assert at_start.returncode == 0, at_start.stderr
    assert f"{topic}[1]: no stored position → 5 (log 5..{high[1]}) moved" in at_start.stdout, at_start.stdout
    assert stored_positions(database_url, group) == {(topic, 0): high[0], (topic, 1): 5}


def test_a_schema_version_that_is_not_an_integer_is_one_line_naming_the_table_and_the_way_out(
    database_url: str, service_env: dict[str, str], invoice_pipeline: Path
) -> None:
    init_db(service_env, invoice_pipeline)
    with psycopg.connect(database_url, autocommit=True) as conn:  # a version table made or edited by hand
        conn.execute("ALTER TABLE microbatch_schema_version ALTER COLUMN version TYPE text")
        conn.execute("UPDATE microbatch_schema_version SET version = 'three'")
    said = (
        "public.microbatch_schema_version records version 'three' (str) for microbatch_offsets, not an integer: "
        "fix or drop that table, then run `microbatch init-db` (SQLSTATE 42804)"
    )
    _one_line_refusal(run_cli(service_env, "init-db", "--pipeline", str(invoice_pipeline)), said)
    checked = run_cli(service_env, "check-config", "--pipeline", str(invoice_pipeline))
    assert checked.returncode == 2 and "Traceback" not in checked.stdout + checked.stderr, checked
    failed = [line for line in checked.stdout.splitlines() if line.startswith("FAIL database: ")]
    assert len(failed) == 1 and said in failed[0], checked.stdout
    # The way out it names: drop the table, and init-db makes it again.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE microbatch_schema_version")
    init_db(service_env, invoice_pipeline)
    checked = run_cli(service_env, "check-config", "--pipeline", str(invoice_pipeline))
    assert "ok   database: reachable; tables and privileges match the pipeline" in checked.stdout, checked.stdout


def test_check_config_loads_the_transform_hook_as_run_does(service_env: dict[str, str], tmp_path: Path) -> None:
    """A hook that does not import is a FAIL line of check-config, not a surprise of `run`."""
    text = (builtin_dir() / "pageviews.toml").read_text()
    assert text.count("dead_letter_topic =") == 1
    pipeline = tmp_path / "pageviews.toml"
    pipeline.write_text(text.replace("dead_letter_topic =", 'transform = "viewhooks:clean"\ndead_letter_topic ='))
    checked = run_cli(service_env, "check-config", "--pipeline", str(pipeline))
    assert checked.returncode == 2 and "Traceback" not in checked.stdout + checked.stderr, checked
    said = "FAIL transform: transform 'viewhooks:clean': cannot import module 'viewhooks' (ModuleNotFoundError"
    assert (
        [line for line in checked.stdout.splitlines() if line.startswith("FAIL transform")]
        == [line for line in checked.stdout.splitlines() if line.startswith(said)]
        != []
    ), checked.stdout
    # Sizes differ: a bytecode cache written within the same second is checked by size too.
    (tmp_path / "viewhooks.py").write_text("def another(event):\n    return event\n")
    checked = run_cli(service_env, "check-config", "--pipeline", str(pipeline))
    assert "FAIL transform: transform 'viewhooks:clean': viewhooks has no function 'clean'" in checked.stdout
    # Said at once (after the probes' server started): this pipeline has no tables, and `run` would otherwise
    # wait for them, past the timeout.
    ran = run_cli(service_env, "run", "--pipeline", str(pipeline), timeout=60)
    assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran.stderr
    assert ran.stderr.splitlines()[-1] == (
        "microbatch: error: transform 'viewhooks:clean': viewhooks has no function 'clean'"
    ), ran.stderr
    (tmp_path / "viewhooks.py").write_text("def clean(event):\n    return event\n")
    checked = run_cli(service_env, "check-config", "--pipeline", str(pipeline))
    assert "ok   transform: viewhooks:clean loads" in checked.stdout, checked.stdout
