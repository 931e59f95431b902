"""Failure classes by SQLSTATE, never by message text (docs/ARCHITECTURE.md, "Failures"), except a
login refused by the server, which libpq reports without a SQLSTATE (`sqlstate_of` restores it).

| class     | SQLSTATE / cause                                                          | what happens             |
|-----------|---------------------------------------------------------------------------|--------------------------|
| transient | 08xxx, 40001, 40P01, 40003, 53xxx, 57P0x, 57014, 55P03, 25006, 25P03,     | retry the same batch,    |
|           | 58xxx, a lost connection without SQLSTATE, timeouts                       | keep group membership    |
| bad data  | 22xxx, 23xxx, 54000                                                       | isolate rows, dead-letter|
| systemic  | 42xxx, 28xxx, 3D000, and anything else                                    | halt, alert, not ready   |
"""

from __future__ import annotations

import re
from enum import StrEnum

import psycopg


class FailureClass(StrEnum):
    """What to do about a failed write."""

    TRANSIENT = "transient"
    BAD_DATA = "bad_data"
    SYSTEMIC = "systemic"


# Exact codes first, then two-character classes. Order matters only within each table.
_EXACT: dict[str, FailureClass] = {
    "40001": FailureClass.TRANSIENT,  # serialization_failure
    "40P01": FailureClass.TRANSIENT,  # deadlock_detected
    "40003": FailureClass.TRANSIENT,  # statement_completion_unknown
    "55P03": FailureClass.TRANSIENT,  # lock_not_available (lock_timeout)
    "57014": FailureClass.TRANSIENT,  # query_canceled (statement_timeout)
    "57P01": FailureClass.TRANSIENT,  # admin_shutdown
    "57P02": FailureClass.TRANSIENT,  # crash_shutdown
    "57P03": FailureClass.TRANSIENT,  # cannot_connect_now (starting up, recovering)
    "57P05": FailureClass.TRANSIENT,  # idle_session_timeout
    "25006": FailureClass.TRANSIENT,  # read_only_sql_transaction (standby after a failover)
    "25P03": FailureClass.TRANSIENT,  # idle_in_transaction_session_timeout
    "54000": FailureClass.BAD_DATA,  # program_limit_exceeded (e.g. index row too large)
    "3D000": FailureClass.SYSTEMIC,  # invalid_catalog_name (no such database)
}
_CLASSES: dict[str, FailureClass] = {
    "08": FailureClass.TRANSIENT,  # connection exception
    "53": FailureClass.TRANSIENT,  # insufficient resources
    "58": FailureClass.TRANSIENT,  # system error (I/O)
    "22": FailureClass.BAD_DATA,  # data exception
    "23": FailureClass.BAD_DATA,  # integrity constraint violation
    "42": FailureClass.SYSTEMIC,  # syntax error or access rule violation (missing table/column)
    "28": FailureClass.SYSTEMIC,  # invalid authorization
}


class DatabaseFailure(Exception):
    """A database operation (a write or a read) failed, and any transaction it was in was rolled back.

    `failure` says what to do: retry (transient), halt (systemic); bad data never surfaces here, the
    writer isolates it. `message` is safe to log (redacted_message: no row values).
    """

    def __init__(self, failure: FailureClass, sqlstate: str | None, message: str) -> None:
        self.failure = failure
        self.sqlstate = sqlstate
        super().__init__(message)

    @classmethod
    def of(cls, exc: BaseException) -> DatabaseFailure:
        """The classified, redacted form of a driver or OS error."""
        return cls(classify(exc), sqlstate_of(exc), redacted_message(exc))


# libpq reports a login the server refused without a SQLSTATE (no result carries one), with the
# server's FATAL message only. These refusals are the ones waiting will not cure, so they get their
# SQLSTATE back from that message (PostgreSQL's own wording: lc_messages must be English for it).
# libpq's own refusals before any server answer (no password given, TLS demanded by one side only)
# are mistakes of the same kind, filed under 28000 (invalid authorization specification).
_LOGIN_REFUSALS = (
    (re.compile(r"FATAL:\s+password authentication failed|fe_sendauth: no password supplied"), "28P01"),
    (
        re.compile(
            r"FATAL:\s+(no pg_hba\.conf entry|role \".*\" (does not exist|is not permitted to log in)"
            r"|\w+ authentication failed)|server does not support SSL, but SSL was required"
            r"|SSL (error: certificate verify failed|connection is required)"
            r"|server certificate for .* does not match host name|root certificate file \".*\" does not exist"
            r"|could not read root certificate file"
        ),
        "28000",
    ),
    (re.compile(r"FATAL:\s+permission denied for database"), "42501"),
    (re.compile(r"FATAL:\s+database \".*\" does not exist"), "3D000"),
)


def sqlstate_of(exc: BaseException) -> str | None:
    """The error's SQLSTATE; for a refused login (which libpq reports without one), the refusal's."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate
    if isinstance(exc, psycopg.OperationalError):
        message = str(exc)
        return next((code for pattern, code in _LOGIN_REFUSALS if pattern.search(message)), None)
    return None


class ReferenceIdConflict(psycopg.errors.ObjectNotInPrerequisiteState):
    """A lookup's find-or-create hit a unique constraint other than its natural key's, most often the
    id column's: its identity or sequence is behind ids inserted by hand. That is the schema's
    state, not the event's: systemic (55000), never a dead letter for the events it would serve."""


class RowEncodingError(psycopg.DataError):
    """A row's value could not be encoded for COPY: bad data (data_exception), isolated like any other."""

    sqlstate = "22000"


def classify_sqlstate(sqlstate: str | None) -> FailureClass | None:
    """The class of a SQLSTATE, or None when there is none (the caller decides from the exception)."""
    if not sqlstate:
        return None
    return _EXACT.get(sqlstate) or _CLASSES.get(sqlstate[:2], FailureClass.SYSTEMIC)


def classify(exc: BaseException) -> FailureClass:
    """Classify any exception raised while writing.

    Without a SQLSTATE: a lost or refused connection, a timeout or an OS-level error is transient;
    anything else is systemic (a bug or a misconfiguration, to be looked at, not retried blindly).
    """
    found = classify_sqlstate(sqlstate_of(exc))
    if found is not None:
        return found
    if isinstance(
        exc,
        psycopg.OperationalError | psycopg.InterfaceError | TimeoutError | ConnectionError | OSError,
    ):
        return FailureClass.TRANSIENT
    return FailureClass.SYSTEMIC


_QUOTED = re.compile(r"(?P<word>\b\w+\s+)?(?P<quoted>\"[^\"]*\"|'[^']*')")
_DIGITS = re.compile(r"(?<![\w\"])-?\d[\d.,:+-]*")
# Words after which a quoted token names a database object, never a row value.
_OBJECT_WORDS = frozenset(
    {
        "relation",
        "constraint",
        "column",
        "table",
        "index",
        "type",
        "schema",
        "function",
        "database",
        "role",
    }
)


def redacted_message(exc: BaseException, limit: int = 300) -> str:
    """A database error's primary message, safe for logs and dead-letter headers, truncated.

    Only the primary message is used (PostgreSQL's DETAIL quotes the failing row). For bad-data
    errors, quoted tokens that do not name a database object and all numbers are masked, since
    messages like `invalid input syntax for type integer: "abc"` embed the offending value.
    """
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = (
        primary if isinstance(primary, str) and primary else (str(exc).strip().split("\n", 1)[0] or type(exc).__name__)
    )
    if classify(exc) is FailureClass.BAD_DATA:
        text = _QUOTED.sub(_mask_value, text)
        text = _DIGITS.sub("…", text)
    elif isinstance(exc, psycopg.ProgrammingError) and sqlstate_of(exc) is None:
        # libpq could not parse the connection string, and quotes the part it could not read: maybe the
        # password (`invalid percent-encoded token: "p%zz…"`), itself holding quotes: from the first
        # quote to the last, all of it goes.
        text = re.sub(r'".*"', '"…"', text)
    return text[:limit]


def _mask_value(match: re.Match[str]) -> str:
    word = match.group("word") or ""
    if word.strip().lower() in _OBJECT_WORDS:
        return match.group(0)
    return f'{word}"…"'
