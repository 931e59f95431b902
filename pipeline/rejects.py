"""Where rejected records go: the contract between the writer and the dead-letter side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pipeline.records import Record, Rejection


class RejectSink(Protocol):
    """Where rejected records go (the dead-letter topic, behind the circuit breaker)."""

    def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
        """Block until every rejection is durably stored; raise RejectSinkError if any is not.

        Called by the writer once per transaction, inside it, before COMMIT, with the records that
        transaction resolves (written or rejected, in order) so a circuit breaker can see the ratio;
        called with no rejections too. It may be called again with the same records if the
        transaction then fails: duplicates are allowed, losses are not. Raising rolls the
        transaction back. Runs on the writer thread.
        """

    def send_ahead(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
        """Start storing `rejections` now, as far as the sink can without waiting: `deliver`, which
        alone confirms they are stored, then has less to wait for while the transaction is open.

        Called by the writer while PostgreSQL reads a transaction's COPY, when that transaction
        starts at the batch's first record, with the rejections decoding made (`resolved`: every
        record of the batch), never the database's: those are remembered as handed over only in
        `deliver` (pipeline.sent_verdicts). They may
        end up stored even if that transaction never commits (duplicates are allowed, as in
        `deliver`). Never raises, and never waits for them to be stored: what it cannot start at
        once is left to `deliver`. Runs on the writer thread. This default starts nothing; a sink
        that subclasses the protocol inherits it.
        """
        return  # nothing started: `deliver` does all of it


class RejectSinkError(Exception):
    """The reject sink could not store every rejection; the transaction was rolled back.

    `handed_over`: whether some of them may have reached their destination all the same (a timeout,
    a refusal after others were sent); False when the sink refused before handing any over.
    """

    handed_over = True
