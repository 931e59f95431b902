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
  then does not resume: its partitions are placed again, which waits until it can be described;
- every CHECK_EVERY_S while they are read (`tick`: one DescribeTopics request, answered in the
  background, so that the loop never waits for it), and at the next step after a fetch says the topic
  is unknown. Not while a retry is awaited: the check before resuming comes first.
- before each write, when the pipeline's rows carry the topic ID (`confirm`, Handover.confirm): the
  background check leaves up to CHECK_EVERY_S in which librdkafka, which reports nothing when a topic
  is deleted, reads the re-created topic's messages from the old offsets. Written then, they would be
  stamped with the old topic ID, and a dedupe key that holds the topic ID would count them again when
  the new incarnation is read from its start. Asked after the last of the write's records was
  consumed, an answer that still gives the ID they are read from proves they are of that
  incarnation (barring a broker whose metadata lags behind the deletion). A partition whose topic
  has another ID now, or none, or that the broker did not answer for, writes only the records an
  earlier answer proved, and is placed again once they are written. So every
  stored position's ID is the ID of its rows. The records read after the last proof and before the
  topic was deleted cannot be told from the new topic's: they are dropped (the broker deleted them).
  One DescribeTopics round trip per write, for these pipelines only.
Each partition still read from another incarnation than its topic's current one is placed again:
placement starts it over as on assignment (`topic_recreated`, audited). Its records not yet written
are dropped, to be read again from the new topic. An ID once left behind is never gone back to, so
that a broker answering from stale metadata cannot send a partition back and forth.
Loop thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from consumer.flow import FlowControl
from consumer.handover import Handover
from consumer.log_facts import LogFacts
from consumer.positions import Positions
from consumer.seeking import Seeker
from pipeline.records import PartitionId

log = logging.getLogger("microbatch.loop")
CHECK_EVERY_S = 10.0
REQUEST_TIMEOUT_S = 10.0  # an answer not in by then is given up, and asked for again at the next check
GONE = "(does not exist)"  # what `confirm` asks LogFacts to answer for a topic the broker does not know


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


def current_ids(described: Mapping[str, str | None], left_behind: Mapping[str, set[str]]) -> dict[str, str | None]:
    """The topic IDs the broker `described`, None for one its topic was re-created from (`left_behind`):
    a broker answering from stale metadata is not believed."""
    return {topic: None if found in left_behind.get(topic, ()) else found for topic, found in described.items()}


class IncarnationWatch:
    """See the module docstring. `tick()` between two steps of the loop."""

    def __init__(
        self,
        admin: AdminClient,
        facts: LogFacts,
        *,
        positions: Positions,
        seeker: Seeker,
        handover: Handover,
        flow: FlowControl,
        clock: Callable[[], float],
    ) -> None:
        self._admin, self._facts, self._positions = admin, facts, positions
        self._seeker, self._handover, self._flow, self._clock = seeker, handover, flow, clock
        self._next_check = clock() + CHECK_EVERY_S
        self._asked: Mapping[PartitionId, str] = {}
        self._answers: Mapping[str, Future[Any]] | None = None
        self._give_up_at = 0.0
        self._left_behind: dict[str, set[str]] = {}  # topic → the IDs it was re-created from
        # Partitions `confirm` cut back to their proven records: placed again once those are written,
        # whatever the broker says by then (librdkafka's own fetch position is past the cut).
        self._cut: set[PartitionId] = set()

    def soon(self) -> None:
        """Check at the next tick (a fetch said a topic is unknown: it may have been deleted)."""
        self._next_check = min(self._next_check, self._clock())

    def tick(self) -> None:
        self._place_cut()
        now = self._clock()
        if self._answers is not None:
            if not all(future.done() for future in self._answers.values()) and now < self._give_up_at:
                return
            answers, self._answers = self._answers, None
            if not self._flow.waiting:
                self._act(moved(self._asked, self._positions.incarnations(), self._current(_topic_ids(answers))))
        elif now >= self._next_check and not self._flow.waiting:
            self._next_check = now + CHECK_EVERY_S
            self._ask(now)

    def check_now(self) -> None:
        """Before paused partitions resume after a retry: asks the broker and waits for its answer
        (LogFacts' timeout). The partitions of a topic it could not describe (the broker did not
        answer, or the topic is gone and not back yet) are placed again rather than resumed unchecked:
        placement waits until the topic can be described (consumer/placement.py), while the other
        topics resume. An answer not believed (an ID the topic was re-created from) is checked again
        at the next tick. Called outside a retry, it makes one due instead. Not when leaving (nothing
        will be fetched)."""
        self._place_cut()  # before anything resumes: a cut partition must not
        asked = self._positions.incarnations()
        if not asked or self._handover.deadline is not None:
            return
        if not self._handover.retrying:  # a write that ended elsewhere (a rebalance callback): resume from a retry
            self._flow.retry_now()
            return
        described = self._facts.topic_ids(topic for topic, _ in asked)
        current = self._current(described)
        if any(found is None for found in current.values()):
            self.soon()
        self._act(moved(asked, asked, current), settle=False)  # the write that ended is settled
        undescribed = sorted(pid for pid in asked if described.get(pid[0]) is None)
        if undescribed:
            topics = sorted({topic for topic, _ in undescribed})
            log.warning("cannot tell whether %s was re-created while its partitions were paused (the broker did not "
                        "describe it): placing them again once it does", ", ".join(topics))  # fmt: skip
            self._seeker.forget(undescribed)

    def confirm(self, pids: Iterable[PartitionId]) -> None:
        """Before a write of records of `pids`, all consumed by now (see the module docstring): asks the
        broker and waits for its answer (LogFacts' timeout).
        - The ID they are read from: the records read so far are of that incarnation
          (`Positions.prove`), and written.
        - Another ID, "the topic does not exist", no answer, or a partition still read from an ID left
          behind or cut before: only the records proven by an earlier answer are written (`_distrust`),
          then the partition is placed again (`_place_cut`, at the next tick or before resuming);
          placement decides where it reads from (it waits for a topic it cannot describe).
        - An answer not believed (an ID left behind, as in `check_now`) proves nothing.
        Never settles, never seeks (a rebalance callback's write calls it)."""
        reading = self._positions.incarnations()
        asked = {pid: reading[pid] for pid in pids if pid in reading}
        if not asked:
            return
        answered = self._facts.topic_ids((topic for topic, _ in asked), gone=GONE)
        current = self._current({topic: None if found == GONE else found for topic, found in answered.items()})
        # Only a believed answer proves anything (an ID left behind may come from stale metadata), and
        # nothing read by a cut partition: librdkafka may have resumed it past the cut.
        self._positions.prove(
            pid for pid, read_from in asked.items() if current.get(pid[0]) == read_from and pid not in self._cut
        )
        if any(found is None for found in current.values()):
            self.soon()
        found = moved(asked, asked, current)
        self._note(found)
        # A topic that does not exist now may have been deleted before or after the records were read,
        # and a broker behind the re-creation answers so too: it proves nothing either.
        deleted = sorted(pid for pid in asked if answered.get(pid[0]) == GONE)
        if deleted:
            log.warning("topic %s does not exist now: writing only what was confirmed read from it before",
                        ", ".join(sorted({topic for topic, _ in deleted})))  # fmt: skip
        undescribed = sorted(pid for pid in asked if answered.get(pid[0]) is None)
        if undescribed:
            log.warning("cannot confirm which incarnation of %s the records to write were read from (the broker did "
                        "not describe it): reading them again once it does",
                        ", ".join(sorted({topic for topic, _ in undescribed})))  # fmt: skip
        # Still read from an ID left behind, or cut before: whatever the broker answers now, what was
        # read since the last proof is not written.
        left = [pid for pid, read_from in asked.items() if read_from in self._left_behind.get(pid[0], ())]
        self._distrust(set(found) | set(deleted) | set(undescribed) | set(left) | (self._cut & asked.keys()))

    def _distrust(self, pids: set[PartitionId]) -> None:
        """Of each partition of `pids`, write only the records an earlier answer proved, then place it
        again: its fetch position goes back to where they end, it is paused, and `_place_cut` forgets
        it once they are written. With none proven it is forgotten at once (its records dropped) and
        placed again at the loop's next step."""
        dropped = []
        for pid in sorted(pids):
            end, stored = self._positions.proven(pid), self._positions.stored(pid)
            if end is None or (stored is not None and end <= stored):
                self._cut.discard(pid)
                dropped.append(pid)
                continue
            self._positions.cut(pid, end)
            self._flow.pause([pid])
            self._cut.add(pid)
        if dropped:
            self._seeker.forget(dropped, place_now=False)

    def _place_cut(self) -> None:
        """Place again each cut partition whose proven records are written (its stored position reached
        their end). One released, forgotten or placed since (nothing proven any more) is let go."""
        if not self._cut:
            return
        written = []
        for pid in sorted(self._cut):
            end, stored = self._positions.proven(pid), self._positions.stored(pid)
            if end is None or (stored is not None and stored >= end):
                self._cut.discard(pid)
                if end is not None:
                    written.append(pid)
        if written:  # placed at the loop's next step, which settles a write in flight first
            self._seeker.forget(written, place_now=False)

    def _ask(self, now: float) -> None:
        self._asked = self._positions.incarnations()
        topics = sorted({topic for topic, _ in self._asked})
        if not topics:
            return
        try:
            self._answers = self._admin.describe_topics(TopicCollection(topics), request_timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            log.debug("cannot describe %s: %s", topics, exc)
            return
        self._give_up_at = now + 2 * REQUEST_TIMEOUT_S

    def _current(self, ids: Mapping[str, str | None]) -> dict[str, str | None]:
        return current_ids(ids, self._left_behind)

    def _act(self, found: Mapping[PartitionId, tuple[str, str]], *, settle: bool = True) -> None:
        if not found:
            return
        self._note(found)
        if settle and not self._handover.settle():
            # The write in flight failed: its records are pending again, and forgetting the partitions
            # would drop them (the records a write's check proved, which the broker no longer holds).
            # The retry writes them, then the check before resuming places the partitions again; with
            # no retry (a fence elsewhere), the next tick asks again at once.
            self.soon()
            return
        self._seeker.forget(list(found))

    def _note(self, found: Mapping[PartitionId, tuple[str, str]]) -> None:
        """Log each partition read from an old incarnation, and never go back to that ID."""
        for (topic, partition), (read_from, current) in sorted(found.items()):
            self._left_behind.setdefault(topic, set()).add(read_from)
            log.warning("%s[%d]: topic ID changed under the running consumer (%s → %s): the topic was re-created; "
                        "placing it again", topic, partition, read_from, current)  # fmt: skip


def _topic_ids(answers: Mapping[str, Future[Any]]) -> dict[str, str | None]:
    """Each described topic's ID; None for an answer that failed or is not in."""
    found: dict[str, str | None] = {}
    for topic, future in answers.items():
        description = future.result() if future.done() and future.exception() is None else None
        found[topic] = None if description is None or description.topic_id is None else str(description.topic_id)
    return found
