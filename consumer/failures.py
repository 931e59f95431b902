"""What a failed write means for the loop: a table from the failure to the action. Pure.

| failure                                   | action      | the loop then                                      |
|-------------------------------------------|-------------|----------------------------------------------------|
| PositionConflict (compare-and-set refused)| reposition  | re-reads those stored positions and seeks there    |
| HaltingReject (no dead-letter topic)      | exit        | stops: exit code 3                                 |
| BreakerOpen (too much rejected)           | halt        | pauses everything, not ready, retries slowly       |
| DeadLetterRefused (deleted, forbidden…)   | halt        | pauses everything, not ready, retries slowly       |
| other RejectSinkError (dead-letter topic) | retry       | pauses everything, retries with backoff            |
| DatabaseFailure, transient                | retry       | pauses everything, retries with backoff            |
| DatabaseFailure, systemic                 | halt        | pauses everything, not ready, retries slowly       |
| anything else (a bug)                     | halt        | as systemic: never a crash loop                    |

Bad data never reaches this table: the writer isolates it and dead-letters it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from consumer.outcomes import BreakerOpen, DeadLetterRefused, HaltingReject
from pipeline.errors import DatabaseFailure, FailureClass
from pipeline.offsets import PositionConflict
from pipeline.records import PartitionId
from pipeline.rejects import RejectSinkError


class Action(StrEnum):
    REPOSITION = "reposition"
    RETRY = "retry"
    HALT = "halt"
    EXIT = "exit"


@dataclass(frozen=True)
class Failure:
    """A classified failure: what to do, the metric label and SQLSTATE, a reason for people."""

    action: Action
    label: str  # the `failure` label of microbatch_retries_total: transient, systemic, dead_letter
    reason: str
    sqlstate: str | None = None
    breaker: bool = False
    detail: str = ""  # the breaker's own words, for /readyz (which names the breaker itself)
    partitions: list[PartitionId] = field(default_factory=list)


def _conflict(error: BaseException) -> Failure:
    assert isinstance(error, PositionConflict)  # noqa: S101 - the table's key guarantees it
    return Failure(Action.REPOSITION, "fenced", str(error), partitions=error.partitions)


def _database(error: BaseException) -> Failure:
    assert isinstance(error, DatabaseFailure)  # noqa: S101 - the table's key guarantees it
    reason = f"{error} (SQLSTATE {error.sqlstate})" if error.sqlstate else str(error)
    action = Action.RETRY if error.failure is FailureClass.TRANSIENT else Action.HALT
    return Failure(action, error.failure.value, reason, error.sqlstate)


# First match wins: subclasses before their bases.
FAILURES: list[tuple[type[BaseException], Callable[[BaseException], Failure]]] = [
    (PositionConflict, _conflict),
    (HaltingReject, lambda error: Failure(Action.EXIT, "systemic", str(error))),
    (
        BreakerOpen,
        lambda error: Failure(
            Action.HALT, "dead_letter", f"dead-letter circuit breaker open: {error}", breaker=True, detail=str(error)
        ),
    ),
    (DeadLetterRefused, lambda error: Failure(Action.HALT, "dead_letter", f"dead-letter topic refused: {error}")),
    (RejectSinkError, lambda error: Failure(Action.RETRY, "dead_letter", str(error))),
    (DatabaseFailure, _database),
]


def classify_failure(error: BaseException) -> Failure:
    """The row of the table that `error` falls under."""
    for kind, make in FAILURES:
        if isinstance(error, kind):
            return make(error)
    return Failure(Action.HALT, "systemic", f"unexpected {type(error).__name__}: {error}")
