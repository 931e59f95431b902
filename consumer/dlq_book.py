"""What the dead-letter producer knows of each rejected message, across retries of a flush. Pure.

A message is *acknowledged* once the dead-letter topic stored a copy of it (kept for the last
`remember` messages: a retried flush does not send those again), *sending* while a copy is queued
in the producer and its delivery report has not come back (a retry waits for that copy instead of
queueing another), or *failed* with the error of its last report (a retry sends it again). Duplicates
stay possible (a copy that timed out may still have been stored), losses do not: a message is
skipped only when a copy of it was acknowledged.

A message is known by its coordinates, timestamp and a checksum of its value (`key_of`): the same
offset of a re-created topic is another message.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from enum import Enum

from confluent_kafka import KafkaError

from pipeline.records import Record

Key = tuple[str, int, int, int | None, int]
REMEMBER = 100_000


def key_of(record: Record) -> Key:
    """A message's identity: its coordinates and time, and a checksum of its value (a re-created topic
    reuses coordinates, and may keep timestamps when it is mirrored)."""
    return (record.topic, record.partition, record.offset, record.timestamp_ms, zlib.crc32(record.value or b""))


class State(Enum):
    NEW = "new"
    SENDING = "sending"
    ACKNOWLEDGED = "acknowledged"
    FAILED = "failed"


class Copy:
    """One produced copy; its report counts only while it is the message's latest copy. `below`: the
    cap it was made under (None: whole, as the limit allowed). `alone` (kept by the Book): no other
    copy was in flight at any time while it was, so no batch held anything else."""

    __slots__ = ("alone", "below", "size")

    def __init__(self, size: int, below: int | None = None) -> None:
        self.size = size
        self.below = below
        self.alone = False


class Book:
    """Acknowledged (bounded), sending and failed messages, and how many copies each was sent as."""

    def __init__(self, remember: int = REMEMBER) -> None:
        self.remember = remember
        self._acknowledged: OrderedDict[Key, None] = OrderedDict()
        self._sending: dict[Key, Copy] = {}
        self._failed: OrderedDict[Key, tuple[KafkaError, Copy]] = OrderedDict()
        self._attempts: OrderedDict[Key, int] = OrderedDict()
        self._lone: tuple[Key, Copy] | None = None  # the copy in flight by itself all along, if any

    def state(self, key: Key) -> State:
        if key in self._acknowledged:
            return State.ACKNOWLEDGED
        if key in self._sending:
            return State.SENDING
        if key in self._failed:
            return State.FAILED
        return State.NEW

    def failure(self, key: Key) -> tuple[KafkaError, Copy] | None:
        return self._failed.get(key)

    def sending(self) -> int:
        """Copies queued in the producer whose report has not come back."""
        return len(self._sending)

    def lone(self) -> Key | None:
        """The message whose copy is in flight and has been the only one in flight all along (None:
        no such copy)."""
        return None if self._lone is None else self._lone[0]

    def sent(self, key: Key, copy: Copy) -> None:
        """`copy` of `key` was handed to the producer (its report is awaited); counts an attempt."""
        self._failed.pop(key, None)
        if self._lone is not None:  # it shares its flight, and may share its batch
            self._lone[1].alone, self._lone = False, None
        copy.alone = not self._sending
        if copy.alone:
            self._lone = (key, copy)
        self._sending[key] = copy
        self._attempts[key] = self._attempts.pop(key, 0) + 1
        while len(self._attempts) > self.remember:
            self._attempts.popitem(last=False)

    def attempts(self, key: Key) -> int:
        """Copies of `key` sent so far (the `dlq.attempts` of the next one is this plus one)."""
        return self._attempts.get(key, 0)

    def reported(self, key: Key, copy: Copy, error: KafkaError | None) -> None:
        """The delivery report of `copy`."""
        if self._lone is not None and self._lone[1] is copy:
            self._lone = None
        if error is None:
            self._acknowledged[key] = None
            self._acknowledged.move_to_end(key)
            while len(self._acknowledged) > self.remember:
                self._acknowledged.popitem(last=False)
            if self._sending.get(key) is copy:
                del self._sending[key]
            self._failed.pop(key, None)
            self._attempts.pop(key, None)
            return
        if self._sending.get(key) is copy:  # a report of an older copy says nothing of the latest
            del self._sending[key]
            if key not in self._acknowledged:
                self._failed[key] = (error, copy)
                while len(self._failed) > self.remember:  # forgetting a failure only means sending afresh
                    self._failed.popitem(last=False)

    def abandon(self) -> None:
        """The producer was replaced: its queued copies will never report; they count as failed."""
        for key, copy in self._sending.items():
            self._failed[key] = (KafkaError(KafkaError._PURGE_QUEUE, "producer replaced"), copy)
        self._sending.clear()
        self._lone = None
