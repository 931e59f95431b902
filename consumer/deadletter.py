"""Where rejected records go.

`HaltOnReject` is used when the pipeline names no dead-letter topic: a rejected record stops the
consumer with a clear message instead of being skipped (nothing is ever silently dropped).
"""

from __future__ import annotations

from collections.abc import Sequence

from consumer.runner import HaltingReject
from pipeline.records import Rejection


class HaltOnReject:
    """A reject sink that refuses every rejection: the flush rolls back and the consumer stops."""

    def deliver(self, rejections: Sequence[Rejection]) -> None:
        first = rejections[0]
        record = first.record
        raise HaltingReject(
            f"message {record.topic}[{record.partition}]@{record.offset} is invalid ({first.reason.value}: "
            f"{first.message}) and the pipeline has no dead_letter_topic; stopping without writing it "
            f"({len(rejections)} invalid message(s) in this batch). Fix the producer or set dead_letter_topic."
        )
