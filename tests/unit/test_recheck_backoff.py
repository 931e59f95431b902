"""After the writer's connection was opened again, the stored positions are read back (Seeker.
recheck_after_reconnect); when the database is unreachable again, that read is tried again once per
SEEK_RETRY_INTERVAL_S, not at every turn of the loop (each turn a connection attempt, and against a
server that does not answer a connect_timeout's wait). The writer thread is a stand-in; Positions,
Window, Pending and Telemetry are the real ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from consumer.pending import Pending
from consumer.placement import Rules
from consumer.positions import Positions
from consumer.seeking import SEEK_RETRY_INTERVAL_S, Seeker
from consumer.telemetry import Telemetry
from consumer.window import Window, WindowPolicy
from pipeline.errors import DatabaseFailure, FailureClass
from pipeline.offsets import StoredPosition
from pipeline.records import PartitionId

PID = ("t", 0)


class Writer:
    """Reads the stored positions, or fails like a database that is down (`down`)."""

    def __init__(self) -> None:
        self.opened, self.reads, self.down = 1, 0, False

    def connections_opened(self) -> int:
        return self.opened

    def call(self, work: Callable[[Any], object]) -> object:
        self.reads += 1
        if self.down:
            raise DatabaseFailure(FailureClass.TRANSIENT, "08006", "connection refused")
        return work(self)

    def stored_positions(self, pids: list[PartitionId]) -> dict[PartitionId, StoredPosition]:
        return dict.fromkeys(pids, StoredPosition(100, None))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_recheck_that_cannot_reach_the_database_is_tried_again_once_per_interval() -> None:
    writer, clock, positions = Writer(), Clock(), Positions()
    positions.assign(PID, 100, known=True)
    seeker = Seeker(cast(Any, None), cast(Any, writer), positions, facts=cast(Any, None), rules=Rules(),
                    window=Window(WindowPolicy(), clock=clock), pending=Pending(), telemetry=Telemetry(),
                    flow=cast(Any, None), clock=clock)  # fmt: skip
    seeker.recheck_after_reconnect()
    assert writer.reads == 0, "the first look only notes the connections opened so far"
    writer.opened, writer.down = 2, True  # reconnected, and down again
    for _ in range(50):  # five seconds of loop turns
        seeker.recheck_after_reconnect()
        clock.now += 0.1
    assert 5 <= writer.reads <= 6, f"{writer.reads} reads: one per {SEEK_RETRY_INTERVAL_S} s"
    writer.down = False
    clock.now += SEEK_RETRY_INTERVAL_S
    seeker.recheck_after_reconnect()
    reads = writer.reads
    seeker.recheck_after_reconnect()
    assert writer.reads == reads, "read back once the database answered: nothing more until it reconnects"
    assert positions.known() == [PID], "the position read back is ours: trusted"
