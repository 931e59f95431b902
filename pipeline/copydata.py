"""Binary COPY data encoded ahead of its write, off the writer thread.

Encoding a window's staging rows costs the client a few milliseconds per thousand rows. Done in the
writer thread, inside the transaction, PostgreSQL waits for it; done on the loop thread while the
previous window is still being written, it overlaps with the database's work, and the writer only
sends bytes. The encoding is psycopg's own (the documented `Copy` with a `FileWriter`), with the
adapters of the writer's connection, so the bytes are exactly what `write_row` would have sent.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.copy import FileWriter


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
