"""Dead-letter headers, the circuit breaker and the guarded sink (pure parts)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.breaker import BreakerPolicy, DeadLetterBreaker
from consumer.deadletter import dead_letter_headers
from consumer.outcomes import BreakerOpen, HaltingReject
from consumer.reject_sinks import GuardedSink, HaltOnReject, rejected_flags
from pipeline.records import Record, Rejection, RejectReason
from pipeline.rejects import RejectSink


def rejection(
    offset: int = 7, *, sqlstate: str | None = None, headers: tuple[tuple[str, bytes | None], ...] = ()
) -> Rejection:
    record = Record("orders", 3, offset, b"k", b"v", headers)
    reason = RejectReason.DB_REJECTED if sqlstate else RejectReason.INVALID_JSON
    return Rejection(record, reason, "why it failed", "CheckViolation" if sqlstate else "JSONDecodeError", sqlstate)


def test_headers_carry_every_field_and_overwrite_incoming_dlq_headers() -> None:
    incoming = (("trace", b"abc"), ("dlq.reason", b"spoofed"), ("empty", None))
    headers = dead_letter_headers(
        rejection(sqlstate="23514", headers=incoming), "g1", 2, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    )
    names = [name for name, _ in headers]
    assert names.count("dlq.reason") == 1
    values = {name: value for name, value in headers}
    assert values["trace"] == b"abc" and values["empty"] is None
    assert values["dlq.original.topic"] == b"orders"
    assert values["dlq.original.partition"] == b"3"
    assert values["dlq.original.offset"] == b"7"
    assert values["dlq.reason"] == b"db_rejected"
    assert values["dlq.error.class"] == b"CheckViolation"
    assert values["dlq.error.sqlstate"] == b"23514"
    assert values["dlq.error.message"] == b"why it failed"
    assert values["dlq.consumer.group"] == b"g1"
    assert values["dlq.failed_at"] == b"2026-01-02T03:04:05.000Z"
    assert values["dlq.attempts"] == b"2"


def test_sqlstate_header_only_for_database_rejections() -> None:
    names = [name for name, _ in dead_letter_headers(rejection(), "g", 1, datetime.now(UTC))]
    assert "dlq.error.sqlstate" not in names


def test_breaker_opens_on_ratio_only_after_enough_records() -> None:
    breaker = DeadLetterBreaker(BreakerPolicy(max_ratio=0.5, window=100, min_records=10, max_consecutive=1000))
    assert breaker.check([True] * 9) is None  # too few to judge a ratio
    breaker.record([False] * 10)
    assert breaker.check([True] * 10) is None  # exactly 50%
    reason = breaker.check([True] * 11)
    assert reason is not None and "rejected" in reason


def test_breaker_window_forgets_old_outcomes() -> None:
    breaker = DeadLetterBreaker(BreakerPolicy(max_ratio=0.5, window=20, min_records=5, max_consecutive=1000))
    breaker.record([True] * 8 + [False] * 2)
    assert breaker.check([False] * 5) is not None  # 8 of 15 rejected
    breaker.record([False] * 20)
    assert breaker.check([True] * 5) is None  # the bad ones have left the window


def test_breaker_opens_on_consecutive_rejections_across_calls() -> None:
    breaker = DeadLetterBreaker(BreakerPolicy(max_ratio=1.0, window=10_000, min_records=1, max_consecutive=5))
    breaker.record([False, True, True, True])
    assert breaker.check([False, True]) is None
    assert breaker.check([True, True]) is not None


class RecordingSink(RejectSink):
    def __init__(self) -> None:
        self.calls: list[int] = []
        self.ahead: list[int] = []

    def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
        self.calls.append(len(rejections))

    def send_ahead(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
        self.ahead.append(len(rejections))


def test_guarded_sink_refuses_before_delivering_anything() -> None:
    inner = RecordingSink()
    sink = GuardedSink(
        inner, DeadLetterBreaker(BreakerPolicy(max_ratio=0.5, window=100, min_records=2, max_consecutive=100))
    )
    bad = [rejection(offset) for offset in range(3)]
    with pytest.raises(BreakerOpen):
        sink.deliver(bad, [r.record for r in bad])
    assert inner.calls == []
    good = [Record("orders", 3, n, None, b"{}") for n in range(10, 20)]
    sink.deliver([], good)
    assert inner.calls == [0]


def test_guarded_sink_sends_ahead_only_what_the_breaker_would_let_through() -> None:
    inner = RecordingSink()
    sink = GuardedSink(
        inner, DeadLetterBreaker(BreakerPolicy(max_ratio=0.5, window=100, min_records=2, max_consecutive=3))
    )
    storm = [rejection(offset) for offset in range(3)]
    sink.send_ahead(storm, [r.record for r in storm])  # all rejected: the commit would be refused
    sink.send_ahead([], [Record("orders", 3, 9, None, b"{}")])  # nothing to send
    assert inner.ahead == []
    few = [rejection(offset) for offset in (1, 5)]
    resolved = [few[0].record, *(Record("orders", 3, n, None, b"{}") for n in (2, 3, 4)), few[1].record]
    sink.send_ahead(few, resolved)  # surely let through
    assert inner.ahead == [2] and inner.calls == [], "sent ahead, not delivered: only deliver confirms"
    spread = [rejection(offset) for offset in (0, 2, 4)]  # 3 could be a run of 3: checked, they are not
    resolved = [Record("orders", 3, n, None, b"{}") if n % 2 else spread[n // 2].record for n in range(6)]
    assert not sink.breaker.surely_admits(3, 6)
    sink.send_ahead(spread, resolved)
    assert inner.ahead == [2, 3]
    assert sink.breaker.check([False]) is None and list(sink.breaker._recent) == [], "nothing was recorded"


def test_halt_on_reject_names_the_message_and_what_to_do() -> None:
    with pytest.raises(HaltingReject, match=r"orders\[3\]@7 is invalid .*set dead_letter_topic"):
        HaltOnReject().deliver([rejection()], [])
    HaltOnReject().deliver([], [])  # nothing rejected: nothing to refuse
    HaltOnReject().send_ahead([rejection()], [])  # nothing goes ahead: the delivery refuses


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(batches=st.lists(st.lists(st.booleans(), max_size=40), max_size=8), window=st.integers(1, 50))
def test_breaker_remembers_outcomes_as_one_at_a_time_would(batches: list[list[bool]], window: int) -> None:
    breaker = DeadLetterBreaker(BreakerPolicy(window=window))
    recent: list[bool] = []
    consecutive = 0
    for outcomes in batches:
        breaker.record(outcomes)
        for rejected in outcomes:  # the reference: one outcome at a time
            recent.append(rejected)
            consecutive = consecutive + 1 if rejected else 0
        assert breaker._consecutive == consecutive
        assert list(breaker._recent) == recent[-window:]


def reference_check(policy: BreakerPolicy, history: list[bool], outcomes: list[bool]) -> str | None:
    """The breaker's verdict taken one outcome at a time, as it was first written."""
    consecutive = 0
    for rejected in history:
        consecutive = consecutive + 1 if rejected else 0
    for rejected in outcomes:
        consecutive = consecutive + 1 if rejected else 0
        if consecutive >= policy.max_consecutive:
            return f"{consecutive} consecutive messages rejected (limit {policy.max_consecutive})"
    combined = [*history, *outcomes][-policy.window :]
    if len(combined) >= policy.min_records and (ratio := sum(combined) / len(combined)) > policy.max_ratio:
        return f"{ratio:.0%} of the last {len(combined)} messages rejected (limit {policy.max_ratio:.0%})"
    return None


@settings(max_examples=1000, deadline=None, database=None, derandomize=True)
@given(
    batches=st.lists(st.lists(st.booleans(), max_size=30), max_size=6),
    outcomes=st.lists(st.booleans(), max_size=40),
    window=st.integers(1, 50),
    min_records=st.integers(1, 20),
    max_consecutive=st.integers(1, 12),
    max_ratio=st.sampled_from([0.1, 0.25, 0.5, 0.9, 1.0]),
)
def test_breaker_checks_as_one_outcome_at_a_time_would_and_admits_surely_only_what_it_admits(
    batches: list[list[bool]], outcomes: list[bool], window: int, min_records: int, max_consecutive: int,
    max_ratio: float,
) -> None:  # fmt: skip
    policy = BreakerPolicy(max_ratio=max_ratio, window=window, min_records=min_records, max_consecutive=max_consecutive)
    breaker = DeadLetterBreaker(policy)
    history: list[bool] = []
    for batch in batches:
        breaker.record(batch)
        history += batch
    verdict = breaker.check(outcomes)
    assert verdict == reference_check(policy, history, outcomes)
    if breaker.surely_admits(outcomes.count(True), len(outcomes)):
        assert verdict is None


def test_breaker_surely_admits_a_window_with_a_few_rejections_without_its_flags() -> None:
    breaker = DeadLetterBreaker(BreakerPolicy())  # the defaults: 50% of 10,000, 1,000 in a row
    breaker.record([n % 1000 == 0 for n in range(10_000)])
    assert breaker.surely_admits(5, 5_000)
    assert not breaker.surely_admits(1_000, 5_000), "1,000 in a row would trip it: check"
    breaker.record([n % 5 < 2 for n in range(10_000)])  # 40% rejected, in runs of two
    assert not breaker.surely_admits(2_000, 5_000), "might be over half of the last 10,000: check"
    assert breaker.check([n % 5 == 0 for n in range(5_000)]) is None, "checked: 30% of the last 10,000"


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(chosen=st.lists(st.integers(0, 29), max_size=12), copies=st.booleans())
def test_rejected_flags_mark_the_rejected_records_by_identity_or_by_position(chosen: list[int], copies: bool) -> None:
    resolved = [Record("orders", offset % 3, offset, None, b"v") for offset in range(30)]
    # copies=True: the rejections hold equal records that are not the same objects (the fallback)
    rejections = [
        Rejection(Record(*resolved[i]) if copies else resolved[i], RejectReason.INVALID_JSON, "why", "E")
        for i in chosen
    ]
    assert rejected_flags(rejections, resolved) == [offset in set(chosen) for offset in range(30)]
