"""Binary COPY data encoded ahead of its write, on the loop thread.

Encoding a window's staging rows costs the client a few milliseconds per thousand rows. Done in the
writer thread, inside the transaction, PostgreSQL waits for it; done on the loop thread while the
previous window is still being written, it overlaps with the database's work, and the writer only
sends bytes. The encoding is psycopg's own: its row formatter, called here once per row, where it
gives exactly the stream `Copy.write_row` gives (`_formatted`), else `Copy.write_row` itself.

psycopg encodes with the adapters of a connection. The writer's connection belongs to the writer
thread, so the encoder opens one of its own (application_name `microbatch-encoder`), used by the
loop thread only and never for a query: it is idle for its whole life.
"""

from __future__ import annotations

import importlib
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
            if (formatted := _formatted(copy, cursor, types, rows)) is not None:
                copy.write(formatted)  # the whole stream, framed: psycopg adds nothing to it
            else:
                write_row = copy.write_row
                for row in rows:
                    write_row(row)
    except (TypeError, ValueError, OverflowError, psycopg.Error):
        return None
    return buffer.getvalue()


def _row_formatter() -> Callable[[Sequence[Any], Any, bytearray], None] | None:
    """psycopg's own row formatter, the one `Copy.write_row` calls (in C with psycopg's C or binary
    package); None when the installed psycopg has none where this looks for it."""
    try:
        module = importlib.import_module("psycopg._copy_base")
    except ImportError:
        return None
    found = getattr(module, "format_row_binary", None)
    return found if callable(found) else None


# Called once per row without the two Python frames `write_row` adds around it. It is not part of
# psycopg's documented API, so it is used only where it gives exactly the bytes `write_row` gives
# (`_formatted`); tests/integration/test_copy_data.py holds this too.
_FORMAT_ROW = _row_formatter()
# The framing of PostgreSQL's binary COPY format (its manual, COPY, "Binary Format"): the 11-byte
# signature, then a 32-bit flags field and a 32-bit header-extension length, both 0; a 16-bit -1 ends it.
SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
TRAILER = b"\xff\xff"
# Column types → whether the direct formatter gave `write_row`'s stream on their first batch. Used by
# the loop thread only.
_FORMATS_AS_WRITE_ROW: dict[tuple[str, ...], bool] = {}


def _formatted(
    copy: psycopg.Copy, cursor: psycopg.Cursor[Any], types: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> bytearray | None:
    """`rows` as a whole binary COPY stream by psycopg's row formatter, or None (use `write_row`): no
    such formatter, or on the first batch of these column types it gave other bytes than `write_row`,
    or raised where `write_row` does not. Raises what formatting raises for a value `write_row` refuses
    too (the caller's verdict: not encoded ahead)."""
    transformer = getattr(getattr(copy, "formatter", None), "transformer", None)
    key = tuple(types)
    format_row = _FORMAT_ROW
    if format_row is None or transformer is None or _FORMATS_AS_WRITE_ROW.get(key) is False:
        return None
    out = bytearray(SIGNATURE)
    try:
        for row in rows:
            format_row(row, transformer, out)
    except Exception:
        if key in _FORMATS_AS_WRITE_ROW:
            raise  # a value it cannot encode, as write_row cannot
        _written_rows(cursor, types, rows)  # raises when write_row refuses a value too: not decided yet
        _FORMATS_AS_WRITE_ROW[key] = False  # it raised where write_row does not: never again
        return None
    out += TRAILER
    if key not in _FORMATS_AS_WRITE_ROW:
        _FORMATS_AS_WRITE_ROW[key] = _written_rows(cursor, types, rows) == out
        if not _FORMATS_AS_WRITE_ROW[key]:
            return None
    return out


def _written_rows(cursor: psycopg.Cursor[Any], types: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> bytes:
    """The stream `Copy.write_row` makes of `rows`: what `_formatted` must equal."""
    buffer = io.BytesIO()
    with psycopg.Copy(cursor, binary=True, writer=FileWriter(buffer)) as copy:
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)
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
