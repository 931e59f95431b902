"""Why a flush could not hand its rejected records on: the reject sink's refusals."""

from __future__ import annotations

from pipeline.rejects import RejectSinkError


class HaltingReject(RejectSinkError):
    """A record was rejected and there is no dead-letter topic: stop rather than skip it."""

    handed_over = False


class DeadLetterUnavailable(RejectSinkError):
    """The dead-letter topic did not acknowledge every message: retry, do not move past them."""


class DeadLetterRefused(RejectSinkError):
    """The dead-letter topic refuses for good (deleted, not authorized, misconfigured, a fatal producer
    error, too small for any letter): halt until someone fixes it, do not move past the messages."""


class BreakerOpen(RejectSinkError):
    """Too much of the input is being rejected: stop advancing instead of dead-lettering it."""

    handed_over = False  # raised before the letters go to the producer (consumer/reject_sinks.py)
