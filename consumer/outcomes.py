"""Why a flush could not hand its rejected records on: the reject sink's three refusals."""

from __future__ import annotations

from pipeline.rejects import RejectSinkError


class HaltingReject(RejectSinkError):
    """A record was rejected and there is no dead-letter topic: stop rather than skip it."""


class DeadLetterUnavailable(RejectSinkError):
    """The dead-letter topic did not acknowledge every message: retry, do not move past them."""


class BreakerOpen(RejectSinkError):
    """Too much of the input is being rejected: stop advancing instead of dead-lettering it."""
