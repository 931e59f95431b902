"""User mistakes found by probing the command line: each is one clear line, never a traceback, and a
password written into DATABASE_URL without percent-encoding never shows in what microbatch prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer

from consumer.kafka_check import check_clients
from consumer.kafka_clients import made
from consumer.settings import ConfigError, load_settings
from pipeline.database import Database, ScrubbedConnectionError, describe_target
from pipeline.errors import FailureClass, classify, sqlstate_of
from pipeline.spec_loader import PipelineFileError, builtin_dir, load_pipeline
from pipeline.url_text import leaked_parts, scrub

INVOICES = (builtin_dir() / "invoices.toml").read_text()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MICROBATCH_") or key in {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"}:
            monkeypatch.delenv(key)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot be read: Is a directory"),
        (b"\xff\xfe", "is not UTF-8 text (byte 0)"),
        (b"x = " + b"9" * 5000, "Exceeds the limit (4300 digits)"),
        (b"x = " + b"[" * 100_000, "is not valid TOML"),
    ],
)
def test_a_pipeline_or_config_file_that_cannot_be_read_says_why(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    path = tmp_path / "file.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(PipelineFileError, match=r"pipeline file .*file\.toml") as pipeline:
        load_pipeline(path)
    with pytest.raises(ConfigError, match=r"config file .*file\.toml") as config:
        load_settings(path)
    assert reason in str(pipeline.value) and reason in str(config.value), (pipeline.value, config.value)


def test_an_empty_group_is_refused_before_librdkafka_aborts_the_process(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(INVOICES.replace('group = "microbatch-invoices"', 'group = ""'))
    with pytest.raises(PipelineFileError, match="group: String should have at least 1 character"):
        load_pipeline(path)


def test_a_default_its_own_field_refuses_is_found_when_the_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    optional = 'ts = { type = "timestamp", required = false, default = "notatime" }'
    path.write_text(INVOICES.replace('ts = { type = "timestamp" }', optional))
    with pytest.raises(PipelineFileError, match=r"fields\.ts\.default: must be an RFC 3339 timestamp"):
        load_pipeline(path)


@pytest.mark.parametrize(
    ("kafka_config", "said"),
    [
        ('{"security.protocol": "bogus"}', 'Invalid value "bogus" for configuration property "security.protocol"'),
        ('{"bogus.prop": "x"}', 'No such configuration property: "bogus.prop"'),
        ('{"security.protocol": "ssl", "ssl.ca.location": "/nonexistent"}', "ssl.ca.location failed"),
        ('{"stats_cb": "x"}', "expected stats_cb property as a callable function"),  # the binding's own check
    ],
)
def test_a_kafka_config_librdkafka_refuses_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, kafka_config: str, said: str
) -> None:
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG", kafka_config)
    with pytest.raises(ConfigError, match="kafka_config: the Kafka client refuses it") as refused:
        check_clients(load_settings(), "group", None)
    assert said in str(refused.value)


def test_check_config_makes_the_producer_only_where_run_makes_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # librdkafka refuses this for an idempotent producer only: run makes one for a dead-letter topic.
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG", '{"max.in.flight.requests.per.connection": "10"}')
    check_clients(load_settings(), "group", None)
    with pytest.raises(ConfigError, match=r"max\.in\.flight"):
        check_clients(load_settings(), "group", "events.dlq")


def test_the_kafka_clients_refusal_masks_the_credentials_in_it() -> None:
    # librdkafka quotes the value it refuses: here the password too (the same text, in another key).
    with pytest.raises(ConfigError) as refused:
        made(Producer, {"security.protocol": "Hunter2Hunter2", "sasl.password": "Hunter2Hunter2"})
    assert "Hunter2" not in str(refused.value) and "**********" in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:S3cret/PW@127.0.0.1:1/x",  # a '/' not encoded: libpq reads a port and a database
        "postgresql://postgres:S3c@retPW@127.0.0.1:1/x",  # an '@': libpq reads a host
        '"postgresql://postgres:S3cretPW@127.0.0.1:1/x"',  # quoted, as some env files leave it
        'postgresql://postgres:S3c"ret PW@127.0.0.1:1/x',  # libpq quotes what it cannot parse
        "dbname=postgresql://postgres:S3cretPW@127.0.0.1:1/x",  # a URL given as a database name
        "host=127.0.0.1 port=1 password='S3c ret\\'PW'",
    ],
)
def test_a_password_libpq_does_not_read_as_one_never_shows(url: str) -> None:
    # init-db fails at once on each (nothing listens on port 1): what it prints must not hold the password.
    env = {**os.environ, "DATABASE_URL": url, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = subprocess.run([sys.executable, "-m", "consumer.cli", "init-db"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    printed = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in printed, printed
    assert "microbatch: error:" in printed and "PostgreSQL" in printed, printed
    for part in ("S3cret", "retPW", "ret PW", "ret'PW", "S3c ret"):
        assert part not in printed, printed


def test_only_a_password_libpq_misreads_is_masked_and_only_in_messages_of_that_url() -> None:
    misread = "postgresql://u:S3c@ret/PW@db/x"  # libpq: password S3c, host ret, database PW@db/x
    assert scrub("host 'ret/PW@db' at db:5432/PW@db/x", misread) == "host '***/***@db' at db:5432/***@db/x"
    for as_written in (
        "postgresql://microbatch:microbatch@db:5432/microbatch",  # the password is also the database's name
        "postgresql://microbatch:microbatch@db:5432/microbatch?application_name=svc@pod1",  # an '@' in the query
        "host=db user=u password=ab&cd dbname=abacus",  # a DSN value runs to the next space
        "postgresql://u:p%40x@db/d",  # percent-encoded, as it should be
    ):
        assert leaked_parts(as_written) == set(), as_written
        assert describe_target(as_written).startswith("db:5432/"), as_written
    assert scrub("u:x@h", "postgresql://u:x/y@h/d") == "u:x@h", "a single character alone stays"


def test_a_scrubbed_connection_error_is_classified_as_the_original() -> None:
    url = "postgresql://u:pass/word@127.0.0.1:1/x"  # libpq: host u, port pass, database word@127.0.0.1:1/x
    with pytest.raises(psycopg.OperationalError) as failed:
        Database(url).connection()
    assert "pass" not in str(failed.value) and "word" not in str(failed.value), failed.value
    refused = ScrubbedConnectionError("FATAL:  ***ssword authentication failed for user")
    refused.sqlstate = sqlstate_of(psycopg.OperationalError('FATAL:  password authentication failed for user "u"'))
    assert classify(refused) is FailureClass.SYSTEMIC and sqlstate_of(refused) == "28P01"


@pytest.mark.parametrize("option", ["--expected", "--ledger"])
def test_produce_refuses_a_file_it_cannot_write_before_it_produces_anything(tmp_path: Path, option: str) -> None:
    # Nothing listens on port 1: had it produced first, it would fail on Kafka, not on the file.
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = subprocess.run([sys.executable, "-m", "consumer.cli", "produce", "--count", "10", option, str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot write the {'expected totals' if option == '--expected' else 'ledger'} to {tmp_path}: Is a " \
           "directory" in result.stderr, result.stderr  # fmt: skip
