"""The last word on shutdown time: once SIGTERM or SIGINT arrived, the process ends within
`shutdown_timeout_s` whatever it is waiting for (a hung database, a dead-letter topic that does not
answer, a Kafka close that lingers).

The run loop keeps its own, earlier deadline and normally returns long before; the watchdog is for
what cannot be interrupted from the outside. When it fires it exits at once (`os._exit`): the open
database transaction, if any, is rolled back by PostgreSQL when the connection drops, and what was
not written is read again by whoever owns the partitions next.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger("microbatch")
EXIT_UNCLEAN = 1
# Fire a little before the deadline: the orchestrator's SIGKILL must not beat us to it.
MARGIN_S = 0.25


class Watchdog:
    """Started once, at the first stop signal; exits the process when the deadline passes."""

    def __init__(self, shutdown_timeout_s: float) -> None:
        self._timeout_s = max(0.5, shutdown_timeout_s - MARGIN_S)
        self._timer: threading.Timer | None = None
        self.code: int | None = None  # what the loop decided, once it returned

    def start(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self._timeout_s, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        code = EXIT_UNCLEAN if self.code is None else self.code
        log.error(
            "shutdown deadline (%.1f s) passed while still waiting; exiting with code %d (what was not written "
            "is read again on restart)", self._timeout_s + MARGIN_S, code,
        )  # fmt: skip
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
