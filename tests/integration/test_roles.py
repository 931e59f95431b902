"""Two database roles: an owner runs `init-db --grant-to`, the runtime role runs the consumer with exactly
the privileges granted, and cannot drop, truncate, delete or create."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from devstack.verify import caught_up
from pipeline.spec_loader import load_pipeline
from tests.support.consumer_process import ConsumerProcess, run_cli
from tests.support.oracle import check, read_ledger
from tests.support.runtime_role import RUNTIME_ROLE
from tests.support.services import KafkaService, wait_until

PARTITIONS = 4


def _as_user(url: str, user: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["user"] = user
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


@pytest.fixture
def owner_url(database_url: str) -> Iterator[str]:
    """An owner role as docs/OPERATIONS.md sets it up: not a superuser, not the database's owner, CREATE on
    the schema only. It runs `init-db`."""
    database = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
    owner = f"owner_{database[-12:]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(owner)))
    try:
        yield _as_user(database_url, owner)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO postgres").format(sql.Identifier(owner)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(owner)))
        # The role itself goes with the database (dropped by the fixture, as postgres, after this).


def _init(env: dict[str, str], owner_url: str, pipeline: Path) -> str:
    result = run_cli(
        {**env, "DATABASE_URL": owner_url}, "init-db", "--pipeline", str(pipeline), "--grant-to", RUNTIME_ROLE
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _table_grants(database_url: str) -> set[tuple[str, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
            "WHERE grantee = %s AND table_catalog = current_database()",
            (RUNTIME_ROLE,),
        ).fetchall()
    return {(str(table), str(privilege)) for table, privilege in rows}


def test_init_db_grants_the_runtime_role_exactly_what_it_needs_and_nothing_more(
    service_env: dict[str, str], database_url: str, owner_url: str, invoice_pipeline: Path
) -> None:
    printed = _init(service_env, owner_url, invoice_pipeline)
    assert f'GRANT USAGE ON SCHEMA "public" TO "{RUNTIME_ROLE}"' in printed, printed
    assert (
        "GRANT TEMPORARY ON DATABASE" in printed
        and 'GRANT SELECT, INSERT, UPDATE ON TABLE "public"."transactions"' in printed
    )
    grants = [line for line in printed.splitlines() if line.startswith("GRANT ")]
    again = _init(service_env, owner_url, invoice_pipeline)
    assert [line for line in again.splitlines() if line.startswith("GRANT ")] == grants, "idempotent"
    assert "created table" not in again

    spec = load_pipeline(str(invoice_pipeline))
    written = [spec.raw.table, *(summary.table for summary in spec.summaries), "microbatch_offsets"]
    expected = {(table, p) for table in written for p in ("SELECT", "INSERT", "UPDATE")}
    expected |= {("microbatch_position_events", "SELECT"), ("microbatch_position_events", "INSERT")}
    expected |= {("microbatch_schema_version", "SELECT")}
    assert _table_grants(database_url) == expected

    runtime = service_env["DATABASE_URL"]
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, has_schema_privilege(%s, 'public', 'CREATE'), "
            "has_database_privilege(%s, current_database(), 'CREATE'), "
            "(SELECT count(*) FROM pg_tables WHERE tableowner = %s) FROM pg_roles WHERE rolname = %s",
            (RUNTIME_ROLE, RUNTIME_ROLE, RUNTIME_ROLE, RUNTIME_ROLE),
        ).fetchone()
    assert row == (False, False, False, False, False, 0)
    statements = (
        "DROP TABLE transactions", "TRUNCATE transactions", "DELETE FROM transactions",
        "DELETE FROM microbatch_offsets", "CREATE TABLE public.intruder (a int)", "ALTER TABLE transactions ADD x int",
    )  # fmt: skip
    allowed = []
    for statement in statements:
        with psycopg.connect(runtime) as conn:
            try:
                conn.execute(statement)
                allowed.append(statement)
            except psycopg.errors.InsufficientPrivilege:
                pass
    assert allowed == [], f"the runtime role could run: {allowed}"


def test_the_consumer_runs_status_and_replay_work_as_the_runtime_role(
    kafka: KafkaService, service_env: dict[str, str], database_url: str, owner_url: str, invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    _init(service_env, owner_url, invoice_pipeline)
    topic, group = f"invoices-{unique}", f"group-{unique}"
    ledger = tmp_path / "ledger.jsonl"
    produced = run_cli(service_env, "produce", "--pipeline", str(invoice_pipeline), "--count", "3000", "--partitions",
                       str(PARTITIONS), "--bad-ratio", "0.02", "--seed", "7", "--ledger", str(ledger))  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    consumer = consumer_factory(service_env, invoice_pipeline)
    wait_until(lambda: caught_up(database_url, group, kafka.bootstrap, topic, PARTITIONS), timeout=120,
               what="the runtime role's consumer to catch up")  # fmt: skip
    status = run_cli(service_env, "status", "--pipeline", str(invoice_pipeline), "--json")
    assert status.returncode == 0, status.stderr
    replay = run_cli(service_env, "dlq", "replay", "--pipeline", str(invoice_pipeline), "--dry-run")
    assert replay.returncode == 0, replay.stderr
    assert consumer.terminate() == 0
    verdict = check(read_ledger([ledger]), database_url, kafka.bootstrap, topic, f"{topic}.dlq", group, PARTITIONS)
    assert verdict.ok, verdict.details
    assert verdict.dead_letters > 0, "the stream had bad messages: the dead-letter path ran as the runtime role"
    # positions reset moves stored positions and audits each move: UPDATE and INSERT, nothing more.
    events = "SELECT count(*) FROM microbatch_position_events WHERE consumer_group = %s"
    with psycopg.connect(database_url) as conn:
        before = conn.execute(events, (group,)).fetchone()
    reset = run_cli(service_env, "positions", "reset", "--pipeline", str(invoice_pipeline), "--topic", topic,
                    "--to", "earliest")  # fmt: skip
    assert reset.returncode == 0, reset.stdout + reset.stderr
    with psycopg.connect(database_url) as conn:
        audited = conn.execute(events, (group,)).fetchone()
        stored = conn.execute("SELECT sum(next_offset) FROM microbatch_offsets WHERE consumer_group = %s",
                              (group,)).fetchone()  # fmt: skip
    assert audited is not None and before is not None and audited[0] - before[0] == PARTITIONS, (before, audited)
    assert stored is not None and stored[0] == 0, stored


def test_check_config_and_run_name_each_missing_privilege(
    service_env: dict[str, str], database_url: str, owner_url: str, invoice_pipeline: Path
) -> None:
    _init(service_env, owner_url, invoice_pipeline)
    role = sql.Identifier(RUNTIME_ROLE)
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(sql.SQL("REVOKE UPDATE ON microbatch_offsets FROM {}").format(role))
        conn.execute(sql.SQL("REVOKE INSERT ON microbatch_position_events FROM {}").format(role))
    for command in ("check-config", "run"):
        result = run_cli(service_env, command, "--pipeline", str(invoice_pipeline), timeout=120)
        output = result.stdout + result.stderr
        assert result.returncode == 2 and "Traceback" not in output, output
        assert "public.microbatch_offsets: the consumer's role lacks UPDATE" in output, output
        assert "public.microbatch_position_events: the consumer's role lacks INSERT" in output, output
        assert "--grant-to" in output, output

    with psycopg.connect(database_url, autocommit=True) as conn:  # the database's owner: a superuser here
        database = sql.Identifier(str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]))
        conn.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC, {}").format(database, role))
    result = run_cli(service_env, "check-config", "--pipeline", str(invoice_pipeline), timeout=120)
    assert result.returncode == 2 and "temporary tables" in result.stdout, result.stdout + result.stderr
