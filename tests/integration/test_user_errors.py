"""User mistakes give one clear, actionable message and no traceback (exit code 2)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.support.consumer_process import run_cli


def assert_clear(result_stdout: str, result_stderr: str, *fragments: str) -> None:
    output = result_stdout + result_stderr
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, output


def test_a_broker_still_unreachable_after_startup_timeout_gives_up_with_exit_4(
    service_env: dict[str, str], invoice_pipeline: Path
) -> None:
    env = {**service_env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "MICROBATCH_STARTUP_TIMEOUT_S": "2"}
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    result = run_cli(env, "run", "--pipeline", str(invoice_pipeline), timeout=60)
    assert result.returncode == 4, result.stderr
    assert_clear(result.stdout, result.stderr, "gave up after startup_timeout_s (2 s) waiting for Kafka at 127.0.0.1:1")
    assert "%3|" not in result.stderr, "librdkafka's own connection log repeats our message"


def test_unreachable_database_never_shows_the_password(service_env: dict[str, str], invoice_pipeline: Path) -> None:
    env = {**service_env, "DATABASE_URL": "postgresql://app:hunter2@127.0.0.1:1/orders"}
    for command in ("init-db", "status"):
        result = run_cli(env, command, "--pipeline", str(invoice_pipeline))
        assert result.returncode == 2, command
        assert_clear(result.stdout, result.stderr, "cannot connect to PostgreSQL at 127.0.0.1:1/orders", "DATABASE_URL")
        assert "hunter2" not in result.stdout + result.stderr
    # `run` waits for an unreachable database (an outage, not a mistake) until startup_timeout_s.
    result = run_cli({**env, "MICROBATCH_STARTUP_TIMEOUT_S": "2"}, "run", "--pipeline", str(invoice_pipeline))
    assert result.returncode == 4
    assert_clear(result.stdout, result.stderr, "waiting for PostgreSQL at 127.0.0.1:1/orders")
    assert "hunter2" not in result.stdout + result.stderr


def test_a_refused_login_is_a_mistake_not_an_outage(
    service_env: dict[str, str], database_url: str, invoice_pipeline: Path
) -> None:
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    info.update(user="nobody_here", password="s3cret-pw")  # noqa: S106 - a wrong password, on purpose
    env = {**service_env, "DATABASE_URL": psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})}
    result = run_cli(env, "run", "--pipeline", str(invoice_pipeline), timeout=60)  # startup_timeout_s 0: forever
    assert result.returncode == 2
    assert_clear(result.stdout, result.stderr, "refused the login", "DATABASE_URL")
    assert "s3cret-pw" not in result.stdout + result.stderr


def test_missing_tables_are_awaited_then_point_to_init_db(service_env: dict[str, str], invoice_pipeline: Path) -> None:
    result = run_cli({**service_env, "MICROBATCH_STARTUP_TIMEOUT_S": "2"}, "run", "--pipeline", str(invoice_pipeline))
    assert result.returncode == 4
    assert_clear(
        result.stdout, result.stderr, "the tables of pipeline 'invoices'", "transactions", "microbatch init-db"
    )


def test_a_table_that_contradicts_the_pipeline_is_a_mistake(
    service_env: dict[str, str], database_url: str, invoice_pipeline: Path
) -> None:
    assert run_cli(service_env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions ALTER COLUMN quantity TYPE text")
    result = run_cli(service_env, "run", "--pipeline", str(invoice_pipeline), timeout=60)
    assert result.returncode == 2
    assert_clear(result.stdout, result.stderr, "does not match pipeline 'invoices'", "column quantity is text")


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"MICROBATCH_MAX_RECORDS": "lots"}, ["max_records (env MICROBATCH_MAX_RECORDS) = 'lots'", "valid integer"]),
        ({"MICROBATCH_MAX_WAIT_MS": "0"}, ["max_wait_ms", "greater than or equal to 1"]),
        ({"MICROBATCH_AUTO_OFFSET_RESET": "oldest"}, ["auto_offset_reset", "'earliest' or 'latest'"]),
        ({"MICROBATCH_MAX_RECORD": "5"}, ["MICROBATCH_MAX_RECORD: unknown setting"]),
        (
            {"MICROBATCH_KAFKA_CONFIG": '{"enable.auto.commit": "true"}'},
            ["enable.auto.commit=true is refused", "must be false"],
        ),
        (
            {"MICROBATCH_PIPELINE": "/nonexistent/pipeline.toml"},
            ["pipeline file /nonexistent/pipeline.toml does not exist"],
        ),
    ],
)
def test_invalid_configuration_names_key_value_and_reason(
    service_env: dict[str, str], env: dict[str, str], fragments: list[str]
) -> None:
    result = run_cli({**service_env, **env}, "run")
    assert result.returncode == 2
    assert_clear(result.stdout, result.stderr, *fragments)


def test_invalid_pipeline_file_lists_each_problem(service_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ntopics = ["t"]\ngroup = "g"\ncolour = "red"\n[fields]\n[raw]\ntable = "Bad Name"\n')
    result = run_cli(service_env, "run", "--pipeline", str(bad))
    assert result.returncode == 2
    assert_clear(result.stdout, result.stderr, "invalid pipeline", "colour: unknown key", "raw.columns: Field required")


def test_missing_privileges_are_named_with_the_grant_to_run(
    service_env: dict[str, str], database_url: str, invoice_pipeline: Path
) -> None:
    assert run_cli(service_env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    role = "reader_" + database_url.rsplit("/", 1)[-1][-8:]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role)))
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    info["user"] = role
    env = {**service_env, "DATABASE_URL": psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})}
    try:
        result = run_cli(env, "run", "--pipeline", str(invoice_pipeline))
        assert result.returncode == 2
        assert_clear(
            result.stdout, result.stderr, "lacks INSERT, UPDATE", "GRANT INSERT, UPDATE ON TABLE public.transactions"
        )
        check = run_cli(env, "check-config", "--pipeline", str(invoice_pipeline))
        assert check.returncode == 2
        assert_clear(check.stdout, check.stderr, "FAIL database", "lacks INSERT, UPDATE")
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_check_config_reports_every_problem_at_once(service_env: dict[str, str], invoice_pipeline: Path) -> None:
    env = {**service_env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "MICROBATCH_STARTUP_TIMEOUT_S": "2"}
    result = run_cli(env, "check-config", "--pipeline", str(invoice_pipeline))
    assert result.returncode == 2
    assert_clear(result.stdout, result.stderr, "ok   configuration", "FAIL kafka: cannot reach Kafka",
                 "FAIL database", "2 problem(s) found")  # fmt: skip
