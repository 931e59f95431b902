"""IncarnationWatch's decisions: when it asks the broker for topic IDs, when it acts on the answer,
and what it places again; and LogFacts' refusal of an ID a topic was re-created from. The admin
client, the seeker, the hand-over and the flow control are stand-ins that record what is asked of
them (LogFacts is the real one); T12b and T12c (tests/chaos/test_positions.py) run the watch against
real Kafka and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest

from consumer.incarnations import CHECK_EVERY_S, GIVE_UP_S, IncarnationWatch
from consumer.log_facts import LogFacts
from consumer.placement import Placement, left_behind
from consumer.positions import Positions
from pipeline.offsets import PositionChange, StoredPosition
from pipeline.records import PartitionId


@dataclass
class Description:
    topic_id: str | None


@dataclass
class Broker:
    """The admin client: what each topic's ID is now, and what was asked."""

    ids: dict[str, str | None]
    answered: bool = True  # False: DescribeTopics requests stay unanswered
    asked: list[list[str]] = field(default_factory=list)

    def describe_topics(self, topics: Any, request_timeout: float) -> dict[str, Future[Any]]:
        names = sorted(topics.topic_names)
        self.asked.append(names)
        answers: dict[str, Future[Any]] = {}
        for name in names:
            answers[name] = Future()
            if self.answered:
                answers[name].set_result(Description(self.ids.get(name)))
        return answers


@dataclass
class Loop:
    """The seeker, the hand-over and the flow control, as far as the watch uses them."""

    waiting: bool = False
    retrying: bool = False
    deadline: float | None = None
    calls: list[str] = field(default_factory=list)
    forgotten: list[PartitionId] = field(default_factory=list)

    def settle(self) -> bool:
        self.calls.append("settle")
        return True

    def forget(self, pids: list[PartitionId]) -> None:
        self.calls.append("forget")
        self.forgotten += pids

    def retry_now(self) -> None:
        self.calls.append("retry_now")


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
    facts = LogFacts(broker, None)  # type: ignore[arg-type]
    watch = IncarnationWatch(facts, positions=positions, seeker=loop, handover=loop, flow=loop, clock=clock)  # type: ignore[arg-type]
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
    clock.now += GIVE_UP_S / 2
    watch.tick()
    assert broker.asked == [["t", "u"]] and loop.calls == [], "still waiting for the answer"
    clock.now += GIVE_UP_S / 2
    watch.tick()  # given up: nothing to act on
    assert loop.calls == []
    watch.soon()
    watch.tick()
    assert broker.asked == [["t", "u"], ["t", "u"]], "asked again"


def test_before_resuming_the_check_waits_for_the_answer_and_places_without_settling() -> None:
    watch, _, broker, loop, _ = _watch({"t": "NEW", "u": "U"})
    loop.retrying = True
    watch.check_now()
    assert broker.asked == [["t", "u"]]
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


def test_before_resuming_a_topic_described_with_an_id_it_was_re_created_from_is_placed_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch, positions, broker, loop, clock = _watch({"t": "NEW", "u": "U"})
    clock.now += CHECK_EVERY_S
    watch.tick()
    watch.tick()  # t placed again on NEW
    positions.sought(("t", 0), 0, 0, topic_id="NEW")
    positions.sought(("t", 1), 0, 0, topic_id="NEW")
    broker.ids["t"] = "OLD"  # stale metadata
    loop.retrying = True
    watch.check_now()
    assert loop.forgotten == [("t", 0), ("t", 1)] * 2, "not resumed on a stale answer: placed again once it is not"
    assert "cannot tell whether t was re-created" in caplog.text


def test_outside_a_retry_the_check_makes_one_due_and_when_leaving_it_does_nothing() -> None:
    watch, _, broker, loop, _ = _watch({"t": "NEW", "u": "U"})
    watch.check_now()  # a rebalance callback released what was left to write
    assert loop.calls == ["retry_now"] and broker.asked == []
    loop.calls.clear()
    loop.retrying, loop.deadline = True, 5.0
    watch.check_now()
    assert loop.calls == [] and broker.asked == []


def test_log_facts_never_believe_an_id_a_topic_was_re_created_from() -> None:
    broker = Broker({"t": "OLD", "u": "U"})
    facts = LogFacts(broker, None)  # type: ignore[arg-type]
    facts.left_behind("t", "OLD")  # a broker answering from stale metadata gives it back
    assert facts.topic_ids(["t", "u"]) == {"t": None, "u": "U"}
    assert facts.answered(facts.describe(["t", "u"])) == {"t": None, "u": "U"}
    broker.ids["t"] = "NEW"
    assert facts.topic_ids(["t"]) == {"t": "NEW"}
    broker.answered = False
    assert facts.answered(facts.describe(["t"])) == {"t": None}, "an answer not in yet is not an ID"


def test_only_a_topic_started_over_leaves_its_old_incarnation_behind() -> None:
    def change(kind: str, old: str | None, new: str) -> PositionChange:
        return PositionChange(("t", 0), StoredPosition(7, old), StoredPosition(0, new), kind)

    placements = {
        ("t", 0): Placement(0, change("topic_recreated", "OLD", "NEW")),
        ("t", 1): Placement(None, change("topic_recreated", "A", "B"), halt="the dedupe key is coordinates"),
        ("u", 0): Placement(7, change("adopted_topic_id", None, "U")),
        ("v", 0): Placement(0, change("topic_recreated", None, "V")),
        ("w", 0): Placement(3),
    }
    assert left_behind(placements) == {("t", "OLD")}
