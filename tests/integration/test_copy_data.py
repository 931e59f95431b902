"""COPY data encoded ahead (pipeline.copydata) against real PostgreSQL's adapters: the stream psycopg's
row formatter makes when the encoder calls it itself is exactly the one `Copy.write_row` makes."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
import pytest

from consumer.workload import InvoiceWorkload, WorkloadOptions
from pipeline import copydata
from pipeline.decode import Decoder
from pipeline.records import Record
from pipeline.spec_loader import load_pipeline
from pipeline.sqlplan import WritePlan


def test_copy_data_encoded_ahead_is_byte_for_byte_what_write_row_makes(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For generated rows and values at the edges of each column type; and a formatter that disagrees
    once is never used for those column types again."""
    spec = load_pipeline("invoices")
    workload = InvoiceWorkload(WorkloadOptions(count=300, seed=12, items=20))
    decoded = Decoder(spec).decode([Record("t", 0, n, m.key, m.value) for n, m in enumerate(workload.messages())])
    moments = decoded.rows[0][7], decoded.rows[1][7]
    edges = [
        (0, "", "ü\u20ac\U0001f600", "x" * 64, "item", -(2**31), "0.0001", moments[0], "t", 0, 2**63 - 1),
        (1, "e", "\\N", "tab\there", "new\nline", 2**31 - 1, "-999999999.9999", moments[1], "", -1, 0),
    ]
    rows = [*decoded.rows, *edges]
    types = WritePlan(spec).copy_types
    with psycopg.connect(database_url) as conn:
        expected = copydata._written_rows(conn.cursor(), types, rows)
        assert copydata.encode_copy_data(conn.cursor(), types, rows) == expected
        assert copydata._FORMATS_AS_WRITE_ROW[tuple(types)] is True

        format_row = copydata._FORMAT_ROW
        assert format_row is not None

        def off_by_one(row: Sequence[object], transformer: object, out: bytearray) -> None:
            format_row(row, transformer, out)
            out += b"\0"

        monkeypatch.setattr(copydata, "_FORMAT_ROW", off_by_one)
        monkeypatch.setattr(copydata, "_FORMATS_AS_WRITE_ROW", {})
        assert copydata.encode_copy_data(conn.cursor(), types, rows) == expected
        assert list(copydata._FORMATS_AS_WRITE_ROW.items()) == [(tuple(types), False)]
        assert copydata.encode_copy_data(conn.cursor(), types, rows[:5]) == copydata._written_rows(
            conn.cursor(), types, rows[:5]
        )


def test_a_value_the_formatter_refuses_gives_no_copy_data(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is decided while encoding ahead: the writer meets the value row by row and isolates it.
    On a first batch, that says nothing about the formatter either."""
    types = WritePlan(load_pipeline("invoices")).copy_types
    bad = (0, "e", "i", "u", "item", "not an integer", "1.5", None, "t", 0, 0)
    monkeypatch.setattr(copydata, "_FORMATS_AS_WRITE_ROW", {})
    with psycopg.connect(database_url) as conn:
        assert copydata.encode_copy_data(conn.cursor(), types, [bad]) is None
        assert copydata._FORMATS_AS_WRITE_ROW == {}
        assert copydata.encode_copy_data(conn.cursor(), types, [bad]) is None


def test_a_formatter_that_raises_where_write_row_does_not_is_never_used_again(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A psycopg whose private formatter changed its signature: the rows are encoded by `write_row`."""
    spec = load_pipeline("invoices")
    workload = InvoiceWorkload(WorkloadOptions(count=20, seed=13, items=5))
    rows = Decoder(spec).decode([Record("t", 0, n, m.key, m.value) for n, m in enumerate(workload.messages())]).rows
    types = WritePlan(spec).copy_types

    def changed(row: Sequence[object], transformer: object, out: bytearray) -> None:
        raise TypeError("format_row_binary() takes 2 positional arguments but 3 were given")

    monkeypatch.setattr(copydata, "_FORMAT_ROW", changed)
    monkeypatch.setattr(copydata, "_FORMATS_AS_WRITE_ROW", {})
    with psycopg.connect(database_url) as conn:
        expected = copydata._written_rows(conn.cursor(), types, rows)
        assert copydata.encode_copy_data(conn.cursor(), types, rows) == expected
        assert list(copydata._FORMATS_AS_WRITE_ROW.values()) == [False]
        assert copydata.encode_copy_data(conn.cursor(), types, rows) == expected
