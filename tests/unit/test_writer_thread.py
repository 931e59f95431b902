"""Where a finished write's window is freed: on the loop thread, once the next write has handed over.

Freeing a window of 5,000 records and rows holds the GIL for about a millisecond per thread. Freed as
the outcome was collected (on either thread), it kept PostgreSQL waiting between two writes; kept
until the next write has sent its statement, it is freed while PostgreSQL works. Pure logic: the
target answers at once.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

from consumer.window import Trigger
from consumer.writer_thread import WriterThread
from pipeline.decode import DecodedBatch
from pipeline.flush_result import FlushResult
from pipeline.records import Batch, Record


class InstantTarget:
    """A write that succeeds at once, after saying it handed its statement over."""

    def write(self, batch: Batch, decoded: Any, sink: Any, **callbacks: Any) -> FlushResult:
        callbacks["on_statement"]()
        return FlushResult(inserted=len(batch.records))


def batch(offset: int) -> Batch:
    return Batch([Record("t", 0, offset, None, b"{}")], {("t", 0): offset or None})


def submitted(writer: WriterThread) -> weakref.ref[DecodedBatch]:
    """Submit a write of one record whose DecodedBatch only the writer holds; a reference that says
    whether that DecodedBatch is still alive."""
    decoded = DecodedBatch()
    writer.submit(batch(0), decoded, Trigger.RECORDS)
    return weakref.ref(decoded)


def test_a_finished_write_is_freed_after_the_next_write_handed_over_not_before() -> None:
    writer = WriterThread(InstantTarget(), sink=None)  # type: ignore[arg-type]
    try:
        alive = submitted(writer)
        outcome = writer.wait(10)
        assert outcome is not None and outcome.ok
        writer.call(lambda target: None)  # the writer thread has since dropped its own references
        assert alive() is not None, "freed on the writer thread, or as its outcome was collected"
        writer.submit(batch(1), DecodedBatch(), Trigger.RECORDS)
        writer.wait_for_handover(10)
        assert alive() is None, "the last window outlived the next write's hand-over"
        assert writer.wait(10) is not None
    finally:
        writer.close()


class FailingTarget:
    def write(self, batch: Batch, decoded: Any, sink: Any, **callbacks: Any) -> FlushResult:
        raise RuntimeError("the database went away")


def test_a_failed_write_is_not_kept_its_records_go_back_to_pending_and_are_decoded_again() -> None:
    writer = WriterThread(FailingTarget(), sink=None)  # type: ignore[arg-type]
    try:
        alive = submitted(writer)
        outcome = writer.wait(10)
        assert outcome is not None and isinstance(outcome.error, RuntimeError)
        del outcome  # its error's traceback holds the write's frame, as long as the loop holds the outcome
        writer.call(lambda target: None)
        gc.collect()  # and the future's, in a cycle through wait()'s frame: the collector frees those
        assert alive() is None, "a failed window's rows stayed alive through its retry's wait"
    finally:
        writer.close()
