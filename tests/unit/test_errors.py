"""The failure classifier over the whole table of docs/ARCHITECTURE.md ("Failures"), and message redaction."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from pipeline.errors import DatabaseFailure, FailureClass, classify, classify_sqlstate, redacted_message, sqlstate_of

T, B, S = FailureClass.TRANSIENT, FailureClass.BAD_DATA, FailureClass.SYSTEMIC

TABLE = [
    ("08000", T), ("08003", T), ("08006", T), ("08001", T), ("08004", T),
    ("40001", T), ("40P01", T), ("40003", T),
    ("53000", T), ("53100", T), ("53200", T), ("53300", T),
    ("57P01", T), ("57P02", T), ("57P03", T), ("57014", T),
    ("55P03", T), ("25006", T), ("25P03", T), ("58030", T),
    ("22000", B), ("22001", B), ("22003", B), ("22007", B), ("22021", B), ("22P02", B), ("22012", B),
    ("23000", B), ("23502", B), ("23503", B), ("23505", B), ("23514", B), ("54000", B),
    ("42000", S), ("42501", S), ("42P01", S), ("42703", S), ("42601", S),
    ("28000", S), ("28P01", S), ("3D000", S), ("3F000", S),
    ("XX000", S), ("21000", S), ("0A000", S), ("54001", S), ("P0001", S),
]  # fmt: skip


@pytest.mark.parametrize(("sqlstate", "expected"), TABLE)
def test_sqlstate_table(sqlstate: str, expected: FailureClass) -> None:
    assert classify_sqlstate(sqlstate) is expected


@pytest.mark.parametrize(("sqlstate", "expected"), TABLE)
def test_psycopg_exceptions_classify_by_their_sqlstate(sqlstate: str, expected: FailureClass) -> None:
    cls = errors.lookup(sqlstate) if sqlstate not in {"58030"} else errors.IoError
    assert classify(cls("boom")) is expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (psycopg.OperationalError("server closed the connection unexpectedly"), T),
        (psycopg.InterfaceError("the connection is closed"), T),
        (TimeoutError(), T),
        (ConnectionResetError(), T),
        (OSError("network unreachable"), T),
        (psycopg.ProgrammingError("bug"), S),
        (ValueError("bug"), S),
        (RuntimeError("unknown"), S),
    ],
)
def test_errors_without_sqlstate(exc: BaseException, expected: FailureClass) -> None:
    assert classify(exc) is expected


def test_no_sqlstate_means_none() -> None:
    assert classify_sqlstate(None) is None and classify_sqlstate("") is None


def test_bad_data_messages_lose_their_values_but_keep_object_names() -> None:
    message = redacted_message(errors.InvalidTextRepresentation('invalid input syntax for type integer: "4242abc"'))
    assert "4242" not in message and "abc" not in message
    kept = redacted_message(errors.CheckViolation('new row for relation "transactions" violates check constraint "q"'))
    assert kept == 'new row for relation "transactions" violates check constraint "q"'


def test_messages_are_truncated() -> None:
    assert len(redacted_message(errors.UndefinedColumn("x" * 1000), limit=50)) == 50


def test_a_connection_string_libpq_cannot_parse_is_reported_without_the_part_it_quotes() -> None:
    try:
        psycopg.connect("postgresql://app:p%zzSecretPw@127.0.0.1:1/db", connect_timeout=1)
    except psycopg.Error as exc:
        failure = DatabaseFailure.of(exc)
    assert "SecretPw" not in str(failure) and "percent-encoded" in str(failure), str(failure)


@pytest.mark.parametrize(
    "message",
    [
        'server certificate for "127.0.0.1" (and 1 other name) does not match host name "db.example"',
        'root certificate file "/etc/ca.pem" does not exist',
    ],
)
def test_tls_verification_failures_are_refused_logins_not_outages(message: str) -> None:
    assert sqlstate_of(psycopg.OperationalError(f"connection failed: {message}")) == "28000"
