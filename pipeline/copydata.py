"""Binary COPY data encoded ahead of its write, on the loop thread.

Encoding a window's staging rows costs the client a few milliseconds per thousand rows. Done in the
writer thread, inside the transaction, PostgreSQL waits for it; done on the loop thread while the
previous window is still being written, it overlaps with the database's work, and the writer only
sends bytes. The encoding is psycopg's own (the documented `Copy` with a `FileWriter`), so the bytes
are exactly what `write_row` would have sent.

psycopg encodes with the adapters of a connection. The writer's connection belongs to the writer
thread, so the encoder opens one of its own (application_name `microbatch-encoder`), used by the
loop thread only and never for a query: it is idle for its whole life.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.copy import FileWriter

# A connection attempt must not hold the loop thread long: it polls Kafka between windows.
CONNECT_TIMEOUT_S = 2
RETRY_AFTER_S = 30.0


def encode_copy_data(
    cursor: psycopg.Cursor[Any], types: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> bytes | None:
    """The binary COPY stream (signature, rows, trailer) of `rows` with column `types`.

    None when a value cannot be encoded: the writer then encodes row by row, meets the same value,
    and isolates it as bad data (RowEncodingError), so nothing is decided here.
    """
    buffer = io.BytesIO()
    try:
        with psycopg.Copy(cursor, binary=True, writer=FileWriter(buffer)) as copy:
            copy.set_types(list(types))
            write_row = copy.write_row
            for row in rows:
                write_row(row)
    except (TypeError, ValueError, OverflowError, psycopg.Error):
        return None
    return buffer.getvalue()


class CopyEncoder:
    """Encodes staging rows as binary COPY data with the adapters of a connection of its own."""

    def __init__(self, database_url: str, types: Sequence[str], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._url = database_url
        self._types = list(types)
        self._clock = clock
        self._conn: psycopg.Connection[Any] | None = None
        self._next_attempt = 0.0

    def encode(self, rows: Sequence[tuple[Any, ...]]) -> bytes | None:
        """The COPY data of `rows`, or None (the writer encodes them itself): no connection to borrow
        adapters from yet, or a value that cannot be encoded."""
        conn = self._connection()
        return None if conn is None else encode_copy_data(conn.cursor(), self._types, rows)

    def _connection(self) -> psycopg.Connection[Any] | None:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._clock() < self._next_attempt:
            return None
        try:
            self._conn = psycopg.connect(
                self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, application_name="microbatch-encoder"
            )
        except (psycopg.Error, OSError):
            self._next_attempt = self._clock() + RETRY_AFTER_S
            return None
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
