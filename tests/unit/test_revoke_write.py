"""The write a cooperative rebalance makes in `on_revoke` (consumer/rebalance.py, Handover.write_now): the
partitions kept lose nothing, whatever the write does.

Their buffered records must stay pending until written: a kept partition's fetch position is past them,
so a buffer dropped without a seek lets the next write move its stored position over records never
written. And they must be written after the callback, not when the next window closes (a quiet
partition may get none). The consumer, the writer thread, the preparer and the seeker are stand-ins;
Handover, Positions, Pending, Window, FlowControl and Rebalance are the real ones.
"""

from __future__ import annotations

from typing import Any, cast

from confluent_kafka import TopicPartition

from consumer.flow import FlowControl
from consumer.handover import Handover
from consumer.pending import Pending
from consumer.positions import Positions
from consumer.rebalance import Rebalance
from consumer.telemetry import Telemetry
from consumer.window import Trigger, Window, WindowPolicy
from consumer.writer_thread import Outcome
from pipeline.errors import DatabaseFailure, FailureClass
from pipeline.records import Batch, PartitionId, Record

KEPT, REVOKED = ("t", 1), ("t", 0)


class Kafka:
    def pause(self, partitions: list[TopicPartition]) -> None:
        pass

    def resume(self, partitions: list[TopicPartition]) -> None:
        pass

    def commit(self, **_: Any) -> None:
        pass


class Writer:
    """A writer thread whose writes end with `error` (or raise at submit with `refuse`)."""

    def __init__(self, error: BaseException | None = None, refuse: BaseException | None = None) -> None:
        self.error, self.refuse = error, refuse
        self.in_flight: tuple[Batch, Trigger] | None = None
        self.submitted: list[Batch] = []

    def submit(self, batch: Batch, decoded: object, trigger: Trigger) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.in_flight = (batch, trigger)
        self.submitted.append(batch)

    def wait(self, timeout_s: float | None = None) -> Outcome | None:
        if self.in_flight is None:
            return None
        (batch, trigger), self.in_flight = self.in_flight, None
        return Outcome(batch, trigger, 0.1, error=self.error)

    def commits(self) -> list[dict[PartitionId, int]]:
        return []


class Preparer:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def prepare(self, records: list[Record], topic_ids: object) -> object:
        if self.error is not None:
            raise self.error
        return object()


class Seeker:
    def released(self, pids: object) -> None:
        pass


def _revoke(writer: Writer, preparer: Preparer) -> tuple[Handover, Positions, FlowControl]:
    """Two partitions at stored position 100, ten records of each buffered; then t0 is revoked."""
    clock = lambda: 0.0  # noqa: E731
    positions, telemetry = Positions(), Telemetry()
    for pid in (REVOKED, KEPT):
        positions.assign(pid, 100, known=True)
    flow = FlowControl(cast(Any, Kafka()), positions, telemetry, clock, retry_initial_s=0.2, retry_max_s=10,
                       halted_retry_s=15)  # fmt: skip
    window = Window(WindowPolicy(), clock=clock)
    handover = Handover(cast(Any, Kafka()), cast(Any, preparer), cast(Any, writer), pending=Pending(),
                        positions=positions, seeker=cast(Any, Seeker()), flow=flow, telemetry=telemetry,
                        raw_table="raw", clock=clock)  # fmt: skip
    runs = [(pid, [Record(*pid, offset, b"k", b"{}") for offset in range(100, 110)]) for pid in (REVOKED, KEPT)]
    window.extend(positions.accept(runs))
    rebalance = Rebalance(handover, positions=positions, seeker=cast(Any, Seeker()), window=window, flow=flow,
                          telemetry=telemetry)  # fmt: skip
    rebalance.on_revoke(cast(Any, Kafka()), [TopicPartition(*REVOKED)])
    return handover, positions, flow


def _kept_offsets(handover: Handover, positions: Positions) -> list[int]:
    return [r.offset for r in positions.unwritten(handover.pending.records) if (r.topic, r.partition) == KEPT]


def test_a_failed_write_in_on_revoke_keeps_the_kept_partitions_records_and_schedules_their_retry() -> None:
    writer = Writer(error=DatabaseFailure(FailureClass.TRANSIENT, "08006", "connection lost"))
    handover, positions, flow = _revoke(writer, Preparer())
    assert len(writer.submitted) == 1 and set(writer.submitted[0].to_positions) == {REVOKED, KEPT}
    assert _kept_offsets(handover, positions) == list(range(100, 110))
    assert [r for r in handover.pending.records if (r.topic, r.partition) == REVOKED] == []
    assert flow.waiting, "the kept records are written after the callback, not when a next window closes"
    assert positions.batch(positions.unwritten(handover.pending.records)).to_positions == {KEPT: 110}


def test_a_preparer_that_raises_in_on_revoke_leaves_the_kept_partitions_records_pending() -> None:
    writer = Writer()
    handover, positions, flow = _revoke(writer, Preparer(error=RuntimeError("an encoder bug")))
    assert writer.submitted == []
    assert _kept_offsets(handover, positions) == list(range(100, 110))
    assert flow.waiting and flow.due(), "written at the next step"


def test_a_write_refused_at_hand_over_in_on_revoke_leaves_the_kept_partitions_records_pending() -> None:
    writer = Writer(refuse=RuntimeError("a write is already in flight"))
    handover, positions, flow = _revoke(writer, Preparer())
    assert _kept_offsets(handover, positions) == list(range(100, 110))
    assert flow.waiting
    # The next write of the kept partition starts at its stored position's record, not past it.
    assert positions.batch(positions.unwritten(handover.pending.records)).from_positions == {KEPT: 100}
    assert next(r.offset for r in positions.unwritten(handover.pending.records)) == 100
