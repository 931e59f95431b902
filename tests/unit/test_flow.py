"""Flow control: a halt on a partition's position stands until the position is valid again, whatever
the writes do meanwhile."""

from __future__ import annotations

from typing import Any

from consumer.failures import Action, Failure
from consumer.flow import FlowControl
from consumer.positions import Positions
from consumer.telemetry import Telemetry


class FakeKafka:
    def __init__(self) -> None:
        self.paused: set[tuple[str, int]] = set()

    def pause(self, partitions: list[Any]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[Any]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}


def _flow() -> tuple[FlowControl, Positions, FakeKafka, Telemetry]:
    positions, kafka, telemetry = Positions(), FakeKafka(), Telemetry()
    positions.assign(("t", 0), 10)
    positions.assign(("t", 1), 20)
    flow = FlowControl(kafka, positions, telemetry, lambda: 0.0, retry_initial_s=0.1, retry_max_s=1.0,  # type: ignore[arg-type]
                       halted_retry_s=5.0)  # fmt: skip
    return flow, positions, kafka, telemetry


def test_a_successful_write_does_not_clear_a_position_halt() -> None:
    flow, positions, kafka, telemetry = _flow()
    positions.halt(("t", 0), "position gap: t[0] offsets 3..9 were deleted")
    flow.schedule_retry(Failure(Action.HALT, "systemic", "position gap: t[0] offsets 3..9 were deleted"))
    flow.recovered()  # a write of another partition succeeded
    assert flow.halt is not None and flow.waiting and kafka.paused == {("t", 0), ("t", 1)}
    assert telemetry.health.halted is not None and "position gap" in telemetry.health.halted


def test_the_halt_clears_once_the_position_is_valid_again() -> None:
    flow, positions, kafka, _ = _flow()
    positions.halt(("t", 0), "position gap")
    flow.schedule_retry(Failure(Action.HALT, "systemic", "position gap"))
    positions.sought(("t", 0), 3, fetch=3)  # the operator reset it; placed again
    flow.recovered()
    assert flow.halt is None and not flow.waiting and kafka.paused == set()


def test_exit_on_halt_applies_to_every_halt() -> None:
    positions, kafka = Positions(), FakeKafka()
    flow = FlowControl(kafka, positions, Telemetry(), lambda: 0.0, retry_initial_s=0.1, retry_max_s=1.0,  # type: ignore[arg-type]
                       halted_retry_s=5.0, exit_on_halt=True)  # fmt: skip
    assert not flow.should_exit
    flow.schedule_retry(Failure(Action.RETRY, "transient", "connection refused"))
    assert not flow.should_exit, "a transient failure is retried, not a halt"
    flow.schedule_retry(Failure(Action.HALT, "systemic", "permission denied"))
    assert flow.should_exit


def test_what_runs_before_resuming_may_keep_the_partitions_paused() -> None:
    flow, _, kafka, _ = _flow()
    flow.schedule_retry(Failure(Action.RETRY, "transient", "connection refused"))
    flow.before_resume = flow.retry_now  # e.g. the topic-ID check, outside a retry
    flow.recovered()
    assert flow.waiting and flow.due() and kafka.paused == {("t", 0), ("t", 1)}
    flow.before_resume = lambda: None  # the retry that follows resumes them
    flow.recovered()
    assert flow.retry_at is None and kafka.paused == set()


def test_a_retry_scheduled_before_resuming_goes_on_with_the_backoff() -> None:
    flow, _, kafka, _ = _flow()
    flow.schedule_retry(Failure(Action.RETRY, "transient", "connection refused"))
    flow.schedule_retry(Failure(Action.RETRY, "transient", "connection refused"))
    attempts = flow._backoff.attempts
    flow.before_resume = lambda: flow.schedule_retry(Failure(Action.RETRY, "transient", "connection refused"))
    flow.recovered()
    assert flow.waiting and kafka.paused == {("t", 0), ("t", 1)}
    assert flow._backoff.attempts == attempts + 1  # not started over from the first delay


def test_retry_now_makes_a_retry_due_at_once() -> None:
    flow, _, _, _ = _flow()
    flow.schedule_retry(Failure(Action.RETRY, "transient", "connection refused"))
    assert flow.waiting and not flow.due()
    flow.retry_now()
    assert flow.due()
