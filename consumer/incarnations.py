"""A topic deleted and re-created under a running consumer: its partitions are placed again.

Placement compares a partition's stored topic ID with the topic's current one when it takes the
partition, and when the broker refuses a fetch position. Neither happens when the topic is deleted
and re-created while the consumer holds its partitions but fetches nothing (every partition paused
for a database retry or a halt) and the new topic is longer than the stored positions by the time they
resume: librdkafka then fetches on from the same offsets in the new topic (it does not follow topic
IDs under a running consumer: librdkafka#3255), and the new topic's messages before those offsets
would be skipped until the next rebalance or restart.

So the topic IDs of the partitions being read are checked:
- before paused partitions resume after a retry (`check_now`, FlowControl.before_resume), once the
  retry wrote what was read before the pause (what was pending and the open window): those records
  belong to the old topic and are kept. Every path to resuming goes through a retry (a rebalance that
  releases what was left to write makes the retry due at once). A topic the broker cannot describe
  then (or describes with an ID it was re-created from) does not resume: its partitions are placed
  again, which waits until it can be described;
- every CHECK_EVERY_S while they are read (`tick`: one DescribeTopics request, answered in the
  background, so that the loop never waits for it), and at the next step after a fetch says the topic
  is unknown. Not while a retry is awaited: the check before resuming comes first.
Each partition still read from another incarnation than its topic's current one is placed again:
placement starts it over as on assignment (`topic_recreated`, audited). Its records not yet written
are dropped, to be read again from the new topic. An ID once left behind is never believed again
(consumer/log_facts.py), so that a broker answering from stale metadata cannot send a partition back.
Loop thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from consumer.flow import FlowControl
from consumer.handover import Handover
from consumer.log_facts import LogFacts
from consumer.positions import Positions
from consumer.seeking import Seeker
from pipeline.records import PartitionId

log = logging.getLogger("microbatch.loop")
CHECK_EVERY_S = 10.0
GIVE_UP_S = 20.0  # an answer not in by then is given up, and asked for again at the next check


def moved(
    asked: Mapping[PartitionId, str], now: Mapping[PartitionId, str], current: Mapping[str, str | None]
) -> dict[PartitionId, tuple[str, str]]:
    """The partitions read from another incarnation than their topic's `current` one, with (the ID
    read from, the current ID). `asked`: the IDs being read when the broker was asked; `now`: those
    being read when it answered. A partition placed in between (its ID changed) is left out, as is a
    topic the broker did not describe (deleted and not re-created yet, or the request failed)."""
    found = {}
    for pid, read_from in asked.items():
        topic_id = current.get(pid[0])
        if now.get(pid) == read_from and topic_id is not None and topic_id != read_from:
            found[pid] = (read_from, topic_id)
    return found


class IncarnationWatch:
    """See the module docstring. `tick()` between two steps of the loop."""

    def __init__(
        self,
        facts: LogFacts,
        *,
        positions: Positions,
        seeker: Seeker,
        handover: Handover,
        flow: FlowControl,
        clock: Callable[[], float],
    ) -> None:
        self._facts, self._positions = facts, positions
        self._seeker, self._handover, self._flow, self._clock = seeker, handover, flow, clock
        self._next_check = clock() + CHECK_EVERY_S
        self._asked: Mapping[PartitionId, str] = {}
        self._answers: Mapping[str, Future[Any]] | None = None
        self._give_up_at = 0.0

    def soon(self) -> None:
        """Check at the next tick (a fetch said a topic is unknown: it may have been deleted)."""
        self._next_check = min(self._next_check, self._clock())

    def tick(self) -> None:
        now = self._clock()
        if self._answers is not None:
            if not all(future.done() for future in self._answers.values()) and now < self._give_up_at:
                return
            answers, self._answers = self._answers, None
            if not self._flow.waiting:
                self._act(moved(self._asked, self._positions.incarnations(), self._facts.answered(answers)))
        elif now >= self._next_check and not self._flow.waiting:
            self._next_check = now + CHECK_EVERY_S
            self._ask(now)

    def check_now(self) -> None:
        """Before paused partitions resume after a retry: asks the broker and waits for its answer
        (LogFacts' timeout). The partitions of a topic it could not describe (the broker did not
        answer, or the topic is gone and not back yet) are placed again rather than resumed unchecked:
        placement waits until the topic can be described (consumer/placement.py), while the other
        topics resume; so are those of a topic described with an ID it was re-created from (stale
        metadata: not believed). Called outside a retry, it makes one due instead. Not when leaving
        (nothing will be fetched)."""
        asked = self._positions.incarnations()
        if not asked or self._handover.deadline is not None:
            return
        if not self._handover.retrying:  # a write that ended elsewhere (a rebalance callback): resume from a retry
            self._flow.retry_now()
            return
        current = self._facts.topic_ids(topic for topic, _ in asked)
        self._act(moved(asked, asked, current), settle=False)  # the write that ended is settled
        uncertain = sorted(pid for pid in asked if current.get(pid[0]) is None)
        if uncertain:
            topics = sorted({topic for topic, _ in uncertain})
            log.warning("cannot tell whether %s was re-created while its partitions were paused (the broker did not "
                        "give its current topic ID): placing them again once it does", ", ".join(topics))  # fmt: skip
            self._seeker.forget(uncertain)

    def _ask(self, now: float) -> None:
        self._asked = self._positions.incarnations()
        if self._asked:
            self._answers = self._facts.describe(topic for topic, _ in self._asked)
            self._give_up_at = now + GIVE_UP_S

    def _act(self, found: Mapping[PartitionId, tuple[str, str]], *, settle: bool = True) -> None:
        if not found:
            return
        for (topic, partition), (read_from, current) in sorted(found.items()):
            self._facts.left_behind(topic, read_from)
            log.warning("%s[%d]: topic ID changed under the running consumer (%s → %s): the topic was re-created; "
                        "placing it again", topic, partition, read_from, current)  # fmt: skip
        if settle:
            self._handover.settle()  # a write in flight is accounted for first, as for a refused fetch position
        self._seeker.forget(list(found))
