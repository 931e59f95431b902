"""One PostgreSQL connection with the session settings the writer relies on, reopened on demand."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pipeline.errors import sqlstate_of
from pipeline.url_text import scrub


@dataclass(frozen=True)
class SessionSettings:
    """Timeouts that keep a stuck statement or a frozen client from holding locks forever.

    `idle_in_transaction_ms` matters for zombies: a consumer frozen mid-flush (SIGSTOP, a long GC
    pause) holds its offsets rows locked; PostgreSQL ends that transaction so the new owner's
    compare-and-set can proceed.
    """

    statement_timeout_ms: int = 120_000
    lock_timeout_ms: int = 30_000
    idle_in_transaction_ms: int = 60_000
    connect_timeout_s: int = 10
    keepalive_idle_s: int = 10
    tcp_user_timeout_ms: int = 30_000
    application_name: str = "microbatch"


class ScrubbedConnectionError(psycopg.OperationalError):
    """A connection failure whose message had the parts of a misread password taken out (pipeline.url_text),
    with the original's SQLSTATE."""


class Database:
    """Owns at most one open connection (autocommit; transactions are explicit blocks).

    `connection()` opens one when there is none or the last one broke; `discard()` drops it after
    an error that may have left it unusable. Not thread-safe: one thread owns it (the writer thread in
    `microbatch run`).
    """

    def __init__(
        self,
        url: str,
        settings: SessionSettings | None = None,
        setup: Sequence[sql.Composed] = (),
    ) -> None:
        self._url = url
        self.settings = settings or SessionSettings()
        self._setup = tuple(setup)
        self._conn: psycopg.Connection[Any] | None = None
        # Connections opened so far: a new one may face a server that restarted and lost recent commits
        # (synchronous_commit off) or a promoted standby; what was believed committed is then read again.
        self.opened = 0

    def connection(self) -> psycopg.Connection[Any]:
        """An open connection; raises psycopg.OperationalError when the server cannot be reached."""
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self.discard()
        s = self.settings
        try:
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=s.connect_timeout_s,
                # A silently dropped connection (a failover, a dead NAT entry) is noticed in tens of seconds,
                # not after the kernel's two hours: keepalives while idle, tcp_user_timeout while sending.
                keepalives=1,
                keepalives_idle=s.keepalive_idle_s,
                keepalives_interval=5,
                keepalives_count=4,
                tcp_user_timeout=s.tcp_user_timeout_ms,
                application_name=s.application_name,
            )
        except psycopg.OperationalError as exc:
            if (scrubbed := scrub(str(exc), self._url)) != str(exc):  # libpq named a host read out of a password
                error = ScrubbedConnectionError(scrubbed)
                error.sqlstate = sqlstate_of(exc)  # classified as the original (a refused login by its words)
                raise error from None
            raise
        try:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false), "
                "set_config('idle_in_transaction_session_timeout', %s, false)",
                (
                    str(s.statement_timeout_ms),
                    str(s.lock_timeout_ms),
                    str(s.idle_in_transaction_ms),
                ),
            )
            for statement in self._setup:
                conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self.opened += 1
        return conn

    def discard(self) -> None:
        """Close the connection (if any) without raising."""
        conn, self._conn = self._conn, None
        if conn is not None:
            # Closing a broken connection may fail; it is gone either way.
            with contextlib.suppress(Exception):
                conn.close()

    def cancel(self) -> None:
        """Ask the server to cancel what the connection is running; safe from another thread, never raises."""
        conn = self._conn
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):  # nothing to cancel, or the server is gone: either way done
                conn.cancel_safe(timeout=2.0)

    def ping(self) -> bool:
        """True when a trivial query succeeds (used by readiness checks)."""
        try:
            self.connection().execute("SELECT 1")
        except (psycopg.Error, OSError):
            self.discard()
            return False
        return True


def describe_target(url: str) -> str:
    """`host:port/dbname` of a DSN or URL, for messages: never the user's password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(unparseable DATABASE_URL)"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or params.get("user") or "")
    return scrub(f"{host}:{port}/{dbname}", url)
