"""What a flush does with its rejected records before its COMMIT: `GuardedSink` puts the circuit breaker
in front of the dead-letter topic (consumer/deadletter.py) and refuses a COMMIT that rejects too much;
`HaltOnReject` is used when the pipeline names no dead-letter topic: a rejected record stops the
consumer instead of being skipped."""

from __future__ import annotations

import operator
from collections.abc import Sequence

from consumer.breaker import DeadLetterBreaker
from consumer.outcomes import BreakerOpen, HaltingReject
from pipeline.records import Record, Rejection
from pipeline.rejects import RejectSink


class HaltOnReject:
    """A reject sink that refuses every rejection: the flush rolls back and the consumer stops."""

    def send_ahead(self, rejections: Sequence[Rejection], resolved: Sequence[Record] = ()) -> None:
        """Nothing goes anywhere ahead: `deliver` refuses."""

    def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record] = ()) -> None:
        if not rejections:
            return
        first = rejections[0]
        record = first.record
        raise HaltingReject(
            f"message {record.topic}[{record.partition}]@{record.offset} is invalid ({first.reason.value}: "
            f"{first.message}) and the pipeline has no dead_letter_topic; stopping without writing it "
            f"({len(rejections)} invalid message(s) in this batch). Fix the producer or set dead_letter_topic."
        )


class GuardedSink:
    """A circuit breaker in front of a reject sink: refuses a commit that rejects too much."""

    def __init__(self, inner: RejectSink, breaker: DeadLetterBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    def send_ahead(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
        """Ahead only what the breaker would let through: a storm of bad data is not sent on. A few
        rejections among many records are let through without the records' flags. This judges
        decoding's rejections against the whole batch; `deliver` judges the records a commit
        resolves, with the database's rejections: letters can go ahead of a commit the breaker then
        refuses (they are sent again after the halt, as after a crash: duplicates, never a loss)."""
        if not rejections:
            return
        breaker = self.breaker
        if (
            breaker.surely_admits(len(rejections), len(resolved))
            or breaker.check(rejected_flags(rejections, resolved)) is None
        ):
            self.inner.send_ahead(rejections, resolved)

    def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
        outcomes = rejected_flags(rejections, resolved)
        reason = self.breaker.check(outcomes)
        if reason is not None:
            raise BreakerOpen(reason)
        self.inner.deliver(rejections, resolved)
        # Recorded before the COMMIT: if that COMMIT then fails, the retry counts these records
        # again, which can only make the breaker stricter, never let more through.
        self.breaker.record(outcomes)


_POSITION = operator.attrgetter("topic", "partition", "offset")


def rejected_flags(rejections: Sequence[Rejection], resolved: Sequence[Record]) -> list[bool]:
    """For each record of `resolved`, whether one of `rejections` rejects it (same topic, partition
    and offset).

    The rejections' records are normally the very objects in `resolved` (the writer hands both out
    of one batch): then they are matched by identity, in C, instead of building a position per
    resolved record (0.16 µs each). When not every rejection is found exactly once that way, by
    position. The two agree whenever no two records of `resolved` share a position, as in a batch.
    """
    if not rejections:
        return [False] * len(resolved)
    identities = {id(rejection.record) for rejection in rejections}
    flags = list(map(identities.__contains__, map(id, resolved)))
    if flags.count(True) == len(identities) == len(rejections):
        return flags
    positions = set(map(_POSITION, (rejection.record for rejection in rejections)))
    return list(map(positions.__contains__, map(_POSITION, resolved)))
