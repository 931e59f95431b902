"""The writer thread: the only thread that uses the pipeline's `Target` (its database connection).

Who may touch what (the whole of it; docs/ARCHITECTURE.md repeats it):
- the writer thread runs `Target` calls (writes, position reads, pings) one at a time, in the order
  they were submitted, and the reject sink (the dead-letter producer) from inside a write;
- the loop thread does everything else: Kafka (consume, pause, resume, seek, commit), the window,
  `Positions`, `Pending`, metrics and health. It reaches the database only through this object:
  `submit` a write, `wait` for its outcome, or `call` a function with the target and wait for it;
- what crosses between them: a `Batch` and its `DecodedBatch` (handed over, not touched again by
  the loop, which only frees them once the next write has handed over: `wait`), an `Outcome` (handed back), and
  the positions each COMMIT stored (a queue, `commits`);
- one exception, at shutdown only: the loop may ask PostgreSQL to cancel the statement in flight
  (`cancel`: libpq's cancel request is made to be sent from another thread).

One write is in flight at most: window N is written while window N+1 is consumed and decoded, and
because calls run in order, a position read submitted after a write sees what that write committed.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TypeVar

from consumer.health import Health
from consumer.window import Trigger
from pipeline import failpoints
from pipeline.decode import DecodedBatch
from pipeline.flush_result import FlushResult
from pipeline.records import Batch, PartitionId
from pipeline.rejects import RejectSink
from pipeline.target import Target

T = TypeVar("T")
# How long the loop thread may keep the GIL while the writer thread wants it back. Each PostgreSQL
# reply wakes the writer, which then waits for the GIL; with CPython's default (5 ms) and a loop
# thread busy decoding, a flush's half-dozen round trips each lose up to that much, and PostgreSQL
# sits idle meanwhile. 0.5 ms measured +15% drain throughput (3 runs each way, 600k events, 2 cores).
GIL_SWITCH_INTERVAL_S = 0.0005


def hand_over_quickly() -> None:
    """Let a thread woken by PostgreSQL take the GIL back within GIL_SWITCH_INTERVAL_S (process-wide)."""
    sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))


class StillWriting(Exception):
    """The write in flight did not end within the time given; it is still in flight."""


class _Failed(Exception):
    """A write that raised `error` after running `seconds` on the writer thread."""

    def __init__(self, error: Exception, seconds: float) -> None:
        super().__init__(error)
        self.error, self.seconds = error, seconds


@dataclass
class Outcome:
    """How a write ended: `result` on success, `error` (the exception) otherwise."""

    batch: Batch
    trigger: Trigger
    seconds: float
    result: FlushResult | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.result is not None


@dataclass
class _InFlight:
    batch: Batch
    decoded: DecodedBatch
    trigger: Trigger
    future: Future[tuple[FlushResult, float]]


class WriterThread:
    """Runs the target's work on one worker thread, in submission order."""

    def __init__(self, target: Target, sink: RejectSink, health: Health | None = None) -> None:
        """`health` is told on the writer thread when work starts, moves and ends (liveness)."""
        hand_over_quickly()
        self._target = target
        self._sink = sink
        self._health = health or Health()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="microbatch-write")
        self._commits: queue.SimpleQueue[dict[PartitionId, int]] = queue.SimpleQueue()
        self._in_flight: _InFlight | None = None
        # The last write whose outcome was collected, kept until the next write has handed over: see `wait`.
        self._spent: _InFlight | None = None
        self._handed_over = threading.Event()

    @property
    def busy(self) -> bool:
        """A write was submitted and its outcome not yet collected."""
        return self._in_flight is not None

    def connections_opened(self) -> int:
        """How many database connections the writer has opened (an int read: safe from the loop thread)."""
        return self._target.connections_opened

    @property
    def finished(self) -> bool:
        """True when a write was submitted and has ended (wait() will not block)."""
        return self._in_flight is not None and self._in_flight.future.done()

    def submit(self, batch: Batch, decoded: DecodedBatch, trigger: Trigger) -> None:
        """Start writing `batch`; the previous write's outcome must have been collected (`wait`)."""
        if self._in_flight is not None:
            raise RuntimeError("a write is already in flight: wait() for it first")
        self._handed_over.clear()
        future = self._executor.submit(self._write, batch, decoded)
        self._in_flight = _InFlight(batch, decoded, trigger, future)

    def _write(self, batch: Batch, decoded: DecodedBatch) -> tuple[FlushResult, float]:
        started = time.monotonic()
        self._health.working(True)
        try:
            result = self._target.write(
                batch, decoded, self._sink, on_commit=self._committed, on_statement=self._handed_over.set,
                on_progress=self._health.progressed,
            )  # fmt: skip
        except Exception as error:  # its duration is the write's, not the loop's wait for it
            raise _Failed(error, time.monotonic() - started) from error
        finally:
            self._health.working(False)
            self._handed_over.set()
        return result, time.monotonic() - started

    def _committed(self, positions: dict[PartitionId, int]) -> None:
        failpoints.hit("after_db_commit")  # stored in PostgreSQL, not yet known to the loop or to Kafka
        self._commits.put(positions)

    def wait_for_handover(self, timeout_s: float) -> None:
        """Block until the write in flight has sent its rows and its statement (or ended), at most `timeout_s`.

        The loop thread calls this before decoding the next window. Until then the writer makes a
        few short round trips (BEGIN and compare-and-set, COPY), and each reply is only handled
        once the writer gets the GIL back: a busy loop thread would make PostgreSQL wait.
        """
        if self._in_flight is not None:
            self._handed_over.wait(timeout_s)
        self._spent = None  # PostgreSQL runs the statement meanwhile: the last window is freed now (`wait`)

    def wait(self, timeout_s: float | None = None) -> Outcome | None:
        """Block until the write in flight (if any) ends, at most `timeout_s`; its outcome, or None when
        there was none. Raises StillWriting (the write stays in flight) when the time is up.

        A successful write's records and rows stay alive here (`_spent`) until the next write has handed
        over (`wait_for_handover`), or the next `wait`: freeing a window of 5,000 records holds the GIL
        for about 2 ms. Freed as the outcome was collected, part on each thread, it kept PostgreSQL
        waiting for the next write: 2.4 ms between two writes, 0.36 ms since (medians of 100).
        """
        in_flight = self._in_flight
        if in_flight is None:
            return None
        self._spent = in_flight
        started = time.monotonic()
        try:
            result, seconds = in_flight.future.result(timeout=timeout_s)
        except FutureTimeout:
            raise StillWriting from None
        except _Failed as failed:
            self._in_flight = self._spent = None  # its records go back to pending; its rows are not kept
            return Outcome(in_flight.batch, in_flight.trigger, failed.seconds, error=failed.error)
        except Exception as error:
            self._in_flight = self._spent = None
            return Outcome(in_flight.batch, in_flight.trigger, time.monotonic() - started, error=error)
        self._in_flight = None
        return Outcome(in_flight.batch, in_flight.trigger, seconds, result=result)

    def cancel(self) -> None:
        """Ask PostgreSQL to cancel the statement in flight (at shutdown, when time is up). The one call
        made on the writer's connection from another thread: libpq's cancel request is meant for it."""
        self._target.cancel()

    def call(self, action: Callable[[Target], T]) -> T:
        """Run `action(target)` on the writer thread after what was submitted before; its result.

        Raises what `action` raises (DatabaseFailure for the target's own methods).
        """

        def run(target: Target) -> T:
            self._health.working(True)
            try:
                return action(target)
            finally:
                self._health.working(False)

        return self._executor.submit(run, self._target).result()

    def commits(self) -> Sequence[dict[PartitionId, int]]:
        """Positions committed since the last call, in commit order."""
        found = []
        while True:
            try:
                found.append(self._commits.get_nowait())
            except queue.Empty:
                return found

    def close(self) -> None:
        """Stop the thread; a write still in flight (cut off at shutdown) is not waited for."""
        self._executor.shutdown(wait=self._in_flight is None, cancel_futures=True)
