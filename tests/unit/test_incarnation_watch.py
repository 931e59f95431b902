"""IncarnationWatch's decisions: when it asks the broker for topic IDs, when it acts on the answer,
and what it places again. The broker, the seeker, the hand-over and the flow control are stand-ins
that record what the watch asks of them; T12b (tests/chaos/test_positions.py) runs it against real
Kafka and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest

from consumer.incarnations import CHECK_EVERY_S, REQUEST_TIMEOUT_S, IncarnationWatch
from consumer.positions import Positions
from pipeline.records import PartitionId, Record


@dataclass
class Description:
    topic_id: str | None


@dataclass
class Broker:
    """The admin client and LogFacts in one: what each topic's ID is now, and who asked."""

    ids: dict[str, str | None]
    answered: bool = True  # False: DescribeTopics requests stay unanswered
    asked: list[list[str]] = field(default_factory=list)
    described: list[list[str]] = field(default_factory=list)
    deleted: set[str] = field(default_factory=set)  # topics the broker says do not exist

    def describe_topics(self, topics: Any, request_timeout: float) -> dict[str, Future[Any]]:
        names = sorted(topics.topic_names)
        self.asked.append(names)
        answers: dict[str, Future[Any]] = {}
        for name in names:
            answers[name] = Future()
            if self.answered:
                answers[name].set_result(Description(self.ids.get(name)))
        return answers

    def topic_ids(self, topics: Any, *, gone: str | None = None) -> dict[str, str | None]:
        names = sorted(set(topics))
        self.described.append(names)
        return {name: gone if name in self.deleted else self.ids.get(name) for name in names}


@dataclass
class Loop:
    """The seeker, the hand-over and the flow control, as far as the watch uses them."""

    waiting: bool = False
    retrying: bool = False
    deadline: float | None = None
    calls: list[str] = field(default_factory=list)
    forgotten: list[PartitionId] = field(default_factory=list)
    settles: bool = True  # False: the write in flight failed

    def settle(self) -> bool:
        self.calls.append("settle")
        return self.settles

    def forget(self, pids: list[PartitionId], *, place_now: bool = True) -> None:
        self.calls.append("forget" if place_now else "forget, placed at the next step")
        self.forgotten += pids

    def retry_now(self) -> None:
        self.calls.append("retry_now")

    def pause(self, pids: list[PartitionId]) -> None:
        self.calls.append(f"pause {pids}")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _watch(ids: dict[str, str | None]) -> tuple[IncarnationWatch, Positions, Broker, Loop, Clock]:
    positions, broker, loop, clock = Positions(), Broker(ids), Loop(), Clock()
    positions.assign(("t", 0), 10, topic_id="OLD")
    positions.assign(("t", 1), 20, topic_id="OLD")
    positions.assign(("u", 0), 5, topic_id="U")
    watch = IncarnationWatch(broker, broker, positions=positions, seeker=loop, handover=loop, flow=loop, clock=clock)  # type: ignore[arg-type]
    return watch, positions, broker, loop, clock


def test_the_background_check_asks_every_interval_and_places_again_what_an_old_incarnation_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch, _, broker, loop, clock = _watch({"t": "NEW", "u": "U"})
    watch.tick()
    assert broker.asked == [], "not before the first interval is over"
    clock.now += CHECK_EVERY_S
    watch.tick()  # asks
    assert broker.asked == [["t", "u"]] and loop.calls == []
    watch.tick()  # the answer is in: acts on it
    assert loop.forgotten == [("t", 0), ("t", 1)], "both partitions of the re-created topic, nothing of u"
    assert loop.calls == ["settle", "forget"], "the write in flight is accounted for before placing again"
    assert caplog.text.count("topic ID changed under the running consumer (OLD → NEW)") == 2
    watch.tick()
    assert broker.asked == [["t", "u"]], "the next check waits for the next interval"


def test_an_id_a_topic_was_re_created_from_is_not_gone_back_to() -> None:
    watch, positions, broker, loop, clock = _watch({"t": "NEW", "u": "U"})
    clock.now += CHECK_EVERY_S
    watch.tick()
    watch.tick()
    positions.sought(("t", 0), 0, 0, topic_id="NEW")  # placed again on the new topic
    positions.sought(("t", 1), 0, 0, topic_id="NEW")
    broker.ids["t"] = "OLD"  # a broker answering from stale metadata
    clock.now += CHECK_EVERY_S
    watch.tick()
    watch.tick()
    assert loop.forgotten == [("t", 0), ("t", 1)], "nothing is sent back to the old incarnation"


def test_nothing_is_asked_or_acted_on_while_a_retry_is_awaited() -> None:
    watch, _, broker, loop, clock = _watch({"t": "NEW", "u": "U"})
    loop.waiting = True
    clock.now += CHECK_EVERY_S
    watch.tick()
    assert broker.asked == [], "the check before resuming comes first"
    loop.waiting = False
    watch.tick()  # asks
    loop.waiting = True
    watch.tick()  # the answer comes in during a retry: dropped
    assert loop.calls == []
    loop.waiting = False
    watch.soon()
    watch.tick()
    watch.tick()
    assert loop.forgotten == [("t", 0), ("t", 1)]


def test_an_unknown_topic_makes_the_check_run_at_the_next_tick_and_an_unanswered_one_is_given_up() -> None:
    watch, _, broker, loop, clock = _watch({"t": "OLD", "u": "U"})
    broker.answered = False
    watch.soon()
    watch.tick()
    assert broker.asked == [["t", "u"]]
    clock.now += REQUEST_TIMEOUT_S
    watch.tick()
    assert broker.asked == [["t", "u"]] and loop.calls == [], "still waiting for the answer"
    clock.now += REQUEST_TIMEOUT_S
    watch.tick()  # given up: nothing to act on
    assert loop.calls == []
    watch.soon()
    watch.tick()
    assert broker.asked == [["t", "u"], ["t", "u"]], "asked again"


def test_before_resuming_the_check_waits_for_the_answer_and_places_without_settling() -> None:
    watch, _, broker, loop, _ = _watch({"t": "NEW", "u": "U"})
    loop.retrying = True
    watch.check_now()
    assert broker.described == [["t", "u"]] and broker.asked == []
    assert loop.forgotten == [("t", 0), ("t", 1)]
    assert loop.calls == ["forget"], "the retry's own write is already settled"


def test_before_resuming_a_topic_the_broker_cannot_describe_is_placed_again_not_resumed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch, _, _, loop, _ = _watch({"t": "OLD", "u": None})  # u: deleted, or the broker did not answer
    loop.retrying = True
    watch.check_now()
    assert loop.forgotten == [("u", 0)], "placement waits until u can be described; t resumes"
    assert "cannot tell whether u was re-created" in caplog.text


def test_before_resuming_an_answer_not_believed_is_asked_again_at_the_next_tick() -> None:
    watch, positions, broker, loop, clock = _watch({"t": "NEW", "u": "U"})
    clock.now += CHECK_EVERY_S
    watch.tick()
    watch.tick()  # t placed again on NEW
    positions.sought(("t", 0), 0, 0, topic_id="NEW")
    positions.sought(("t", 1), 0, 0, topic_id="NEW")
    broker.ids["t"] = "OLD"  # stale metadata
    loop.retrying = True
    watch.check_now()
    assert loop.forgotten == [("t", 0), ("t", 1)], "the stale answer places nothing, and resumes"
    watch.tick()
    assert broker.asked[-1] == ["t", "u"], "asked again at once, in the background"


def test_outside_a_retry_the_check_makes_one_due_and_when_leaving_it_does_nothing() -> None:
    watch, _, broker, loop, _ = _watch({"t": "NEW", "u": "U"})
    watch.check_now()  # a rebalance callback released what was left to write
    assert loop.calls == ["retry_now"] and broker.described == []
    loop.calls.clear()
    loop.retrying, loop.deadline = True, 5.0
    watch.check_now()
    assert loop.calls == [] and broker.described == []


def test_before_a_write_what_is_still_read_from_its_topic_is_kept_and_written() -> None:
    watch, _, broker, loop, _ = _watch({"t": "OLD", "u": "U"})
    watch.confirm([("t", 0), ("u", 0)])
    assert broker.described == [["t", "u"]], "asked once, after the records were consumed, for their topics only"
    assert loop.calls == [] and loop.forgotten == []


def test_before_a_write_the_records_an_earlier_answer_proved_are_written_and_only_the_rest_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch, positions, broker, loop, _ = _watch({"t": "OLD", "u": "U"})
    positions.sought(("t", 0), 10, 50, topic_id="OLD")  # read 10..49 since it was placed at 10
    watch.confirm([("t", 0), ("t", 1)])
    assert positions.proven(("t", 0)) == 50 and positions.proven(("t", 1)) == 20
    positions.sought(("t", 0), 10, 50, topic_id="OLD")
    assert positions.proven(("t", 0)) is None, "placed again: nothing read since is proven"
    watch.confirm([("t", 0)])
    # The write fails (the database is down); the topic is re-created while it waits for its retry.
    positions.accept([(("t", 0), [Record("t", 0, offset, None, b"{}") for offset in range(50, 80)])])  # 50..79
    broker.ids["t"] = "NEW"  # ... and 50..79 may be the new topic's, read at the old offsets
    watch.confirm([("t", 0), ("t", 1)])
    buffered = [Record("t", 0, offset, None, b"{}") for offset in range(10, 80)]
    assert [r.offset for r in positions.unwritten(buffered)] == list(range(10, 50)), "only what was proven"
    assert loop.forgotten == [("t", 1)], "t[1]: nothing read past its stored position was proven"
    assert loop.calls == ["pause [('t', 0)]", "forget, placed at the next step"]
    assert "topic ID changed under the running consumer (OLD → NEW)" in caplog.text
    watch.tick()
    assert loop.forgotten == [("t", 1)], "t[0] waits until 10..49 are written"
    broker.ids["t"] = "OLD"  # whatever the broker says by then (librdkafka's fetch position is past the cut)
    watch.confirm([("t", 0)])  # a retry's check: nothing read past the cut is proven or written
    assert positions.proven(("t", 0)) == 50
    positions.committed({("t", 0): 50})
    watch.tick()
    assert loop.forgotten == [("t", 1), ("t", 0)], "placed again once 10..49 are written"
    assert loop.calls[-1] == "forget, placed at the next step", "by step 3, which settles a write in flight first"


def test_before_a_write_a_re_created_topic_s_partitions_are_dropped_and_placed_at_the_next_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch, positions, broker, loop, _ = _watch({"t": "NEW", "u": "U"})
    watch.confirm([("t", 1), ("u", 0)])
    assert broker.described == [["t", "u"]]
    assert loop.forgotten == [("t", 1)], "only the partitions with records to write, of the re-created topic"
    assert loop.calls == ["forget, placed at the next step"], "never settles nor seeks: a revoke's write calls it"
    assert "topic ID changed under the running consumer (OLD → NEW)" in caplog.text
    positions.sought(("t", 1), 0, 0, topic_id="NEW")
    broker.ids["t"] = "OLD"  # stale metadata after the move: not believed, and nothing is placed back
    watch.confirm([("t", 1)])
    assert loop.forgotten == [("t", 1)]


def test_before_a_write_a_topic_the_broker_does_not_describe_is_not_written_but_read_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch, _, broker, loop, _ = _watch({"t": "OLD", "u": None})  # u: deleted, or the broker did not answer
    watch.confirm([("t", 0), ("u", 0), ("v", 0)])  # v: not owned, nothing asked about it
    assert loop.forgotten == [("u", 0)]
    assert "cannot confirm which incarnation of u" in caplog.text
    watch.tick()
    assert broker.asked == [["t", "u"]], "the background check runs at once, not an interval later"


def test_before_a_write_a_deleted_topic_proves_nothing_and_only_what_was_proven_is_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch, positions, broker, loop, _ = _watch({"t": "OLD", "u": "U"})
    positions.sought(("t", 0), 10, 50, topic_id="OLD")
    watch.confirm([("t", 0)])
    positions.accept([(("t", 0), [Record("t", 0, offset, None, b"{}") for offset in range(50, 60)])])
    broker.deleted.add("t")  # deleted before or after 50..59 were read: a broker behind a re-creation says so too
    watch.confirm([("t", 0), ("t", 1), ("u", 0)])
    assert positions.proven(("t", 0)) == 50, "no proof from an answer that the topic does not exist"
    buffered = [Record("t", 0, offset, None, b"{}") for offset in range(10, 60)]
    assert [r.offset for r in positions.unwritten(buffered)] == list(range(10, 50))
    assert loop.forgotten == [("t", 1)] and loop.calls == ["pause [('t', 0)]", "forget, placed at the next step"]
    assert "topic t does not exist now: writing only what was confirmed read from it before" in caplog.text
    watch.tick()
    assert broker.asked == [["t", "u"]], "the background check watches for the topic to come back, at once"
    # It was a broker behind the times: the topic is there, unchanged, and a resume (a retry's) let
    # librdkafka deliver from its own fetch position, past the cut.
    broker.deleted.clear()
    positions.accept([(("t", 0), [Record("t", 0, offset, None, b"{}") for offset in range(60, 70)])])
    watch.confirm([("t", 0)])
    buffered = [Record("t", 0, offset, None, b"{}") for offset in range(10, 70)]
    assert [r.offset for r in positions.unwritten(buffered)] == list(range(10, 50)), "no gap from 50 to 60"
    positions.committed({("t", 0): 50})
    watch.tick()
    assert loop.forgotten[-1] == ("t", 0), "placed again (at 50, its stored position) once 10..49 are written"


def test_a_retry_the_broker_does_not_answer_writes_what_was_proven_before() -> None:
    watch, positions, broker, loop, _ = _watch({"t": "OLD", "u": "U"})
    positions.sought(("t", 0), 10, 50, topic_id="OLD")
    watch.confirm([("t", 0)])  # then the write fails; at the retry the broker does not answer
    broker.ids["t"] = None
    watch.confirm([("t", 0)])
    buffered = [Record("t", 0, offset, None, b"{}") for offset in range(10, 50)]
    assert [r.offset for r in positions.unwritten(buffered)] == list(range(10, 50)) and loop.forgotten == []


def test_a_stale_answer_proves_nothing() -> None:
    watch, positions, broker, _, _ = _watch({"t": "OLD", "u": "U"})
    positions.sought(("t", 0), 10, 50, topic_id="OLD")
    watch.confirm([("t", 0)])
    broker.ids["t"] = "NEW"
    watch.confirm([("t", 0)])  # cut at 50 and paused; OLD is left behind
    # Resumed before it was placed again (a retry's resume): librdkafka reads the new topic at 50.
    positions.accept([(("t", 0), [Record("t", 0, offset, None, b"{}") for offset in range(50, 70)])])
    broker.ids["t"] = "OLD"  # a broker answering from stale metadata
    watch.confirm([("t", 0)])
    assert positions.proven(("t", 0)) == 50, "50..69 are not vouched for by an answer not believed"
    buffered = [Record("t", 0, offset, None, b"{}") for offset in range(10, 70)]
    assert [r.offset for r in positions.unwritten(buffered)] == list(range(10, 50)), "an ID left behind is gone"


def test_when_the_write_in_flight_fails_the_background_check_leaves_its_records_to_the_retry() -> None:
    watch, _, _, loop, clock = _watch({"t": "NEW", "u": "U"})
    loop.settles = False  # the write in flight fails: its records are pending again
    clock.now += CHECK_EVERY_S
    watch.tick()
    watch.tick()
    assert loop.calls == ["settle"] and loop.forgotten == [], "nothing dropped: the retry writes them first"
    loop.retrying = True
    watch.check_now()  # before resuming, once the retry wrote them
    assert loop.forgotten == [("t", 0), ("t", 1)]
