"""Verdicts already dead-lettered (pipeline/sent_verdicts.py) and the bisection that writes around them."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.bisect import RangeStack
from pipeline.records import Batch, Record, Rejection, RejectReason
from pipeline.sent_verdicts import SentVerdicts
from tests.unit.test_bisect import attempt

TOPIC = "t"


def _record(partition: int, offset: int, value: bytes = b"v") -> Record:
    return Record(TOPIC, partition, offset, None, value)


def _rejected(record: Record) -> Rejection:
    return Rejection(record, RejectReason.DB_REJECTED, "check", "CheckViolation", "23514")


def _batch(records: list[Record], topic_id: str | None = "id-1") -> Batch:
    pids = {(r.topic, r.partition) for r in records}
    return Batch(records, dict.fromkeys(pids), topic_ids=dict.fromkeys(pids, topic_id))


def test_a_write_takes_the_verdicts_of_its_records_by_coordinates_incarnation_and_value() -> None:
    records = [_record(0, 10), _record(0, 11), _record(1, 10), _record(0, 12, b"other")]
    sent = SentVerdicts()
    assert sent.take(_batch(records), [0, 1, 2, 3]) == {}
    letters = [_rejected(_record(0, 11)), _rejected(_record(1, 10)), _rejected(_record(0, 12))]
    sent.remember(letters, {(TOPIC, 0): "id-1", (TOPIC, 1): "id-1"})
    # Row numbers index row_records (record 0 was rejected while decoding: no row).
    assert sent.take(_batch(records), [1, 2, 3]) == {0: letters[0], 1: letters[1]}  # offset 12's value differs
    assert len(sent) == 2  # the one that did not match is forgotten
    assert sent.take(_batch(records, "id-2"), [1, 2, 3]) == {}  # the topic was re-created
    assert len(sent) == 0 and not sent._sent  # no empty partition left behind


def test_a_verdict_is_forgotten_on_evidence_only() -> None:
    """Kept while its partition is not in a write (lost, or being re-read), and for offsets a write does
    not reach; forgotten once a write starts past it."""
    sent = SentVerdicts()
    sent.remember([_rejected(_record(0, 5)), _rejected(_record(0, 7)), _rejected(_record(1, 5))], {})
    assert set(sent.take(_batch([_record(1, 5)], None), [0])) == {0}
    assert len(sent) == 3
    assert sent.take(_batch([_record(0, 5)], None), [0]) != {}  # offset 7 is not in it: kept
    assert len(sent) == 3
    later = Batch([_record(0, 8)], {(TOPIC, 0): 6}, topic_ids={(TOPIC, 0): None})
    assert sent.take(later, [0]) == {}
    assert len(sent) == 2  # offset 5 is behind the stored position: final
    again = Batch([_record(0, 5), _record(0, 7)], {(TOPIC, 0): 5}, topic_ids={(TOPIC, 0): None})
    assert set(sent.take(again, [0, 1])) == {1}  # offset 7 kept, offset 5 gone


def test_an_unknown_topic_id_is_no_proof_of_another_message() -> None:
    sent = SentVerdicts()
    sent.remember([_rejected(_record(0, 5))], {(TOPIC, 0): None})
    assert set(sent.take(_batch([_record(0, 5)], "id-1"), [0])) == {0}
    sent = SentVerdicts()
    sent.remember([_rejected(_record(0, 5))], {(TOPIC, 0): "id-1"})
    assert set(sent.take(_batch([_record(0, 5)], None), [0])) == {0}


def test_a_kept_verdict_does_not_hold_the_consumed_message_and_is_handed_out_about_the_current_record() -> None:
    message_headers = lambda: [("h", b"v")]  # noqa: E731 - stands for a consumed message's accessor
    sent = SentVerdicts()
    sent.remember([_rejected(_record(0, 5)._replace(headers=message_headers))], {})
    assert sent._sent[(TOPIC, 0)][5][0].record.headers == ()
    current = _record(0, 5)
    (rejection,) = sent.take(_batch([current], None), [0]).values()
    assert rejection.record is current
    assert len(sent) == 1


def test_a_commit_forgets_the_verdicts_it_moved_past_on_its_partitions_only() -> None:
    sent = SentVerdicts()
    sent.remember((_rejected(_record(p, o)) for p, o in [(0, 5), (0, 9), (1, 5)]), {})
    sent.settle({(TOPIC, 0): 9})
    assert len(sent) == 2
    records = [_record(0, 9), _record(1, 5), _record(0, 5)]
    assert set(sent.take(_batch(records, None), [0, 1, 2])) == {0, 1}
    sent.settle({(TOPIC, 0): 10, (TOPIC, 1): 6})
    assert len(sent) == 0


def test_settled_rows_are_pending_alone_in_order() -> None:
    stack = RangeStack(10, [7, 0, 4])
    seen = []
    while (node := stack.next(10)) is not None:
        seen.append((node.lo, node.hi, node.settled))
        (stack.reject if node.settled else stack.succeed)(node)
    assert seen == [(0, 1, True), (1, 4, False), (4, 5, True), (5, 7, False), (7, 8, True), (8, 10, False)]
    assert stack.resolved == 10


@pytest.mark.parametrize("settled", [[10], [-1], [3, 3]])
def test_a_settled_row_outside_the_rows_or_twice_is_refused(settled: list[int]) -> None:
    with pytest.raises(ValueError, match="settled row"):
        RangeStack(10, settled)


@given(
    n=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    budget=st.integers(1, 8),
    limit_share=st.floats(0.1, 1.0),
)
def test_bisection_around_settled_rows_rejects_exactly_them_and_the_bad_ones(
    n: int, seed: int, budget: int, limit_share: float
) -> None:
    """The writer's loop (pipeline/writer.py `_bisect`), transaction after transaction: settled rows cost
    no attempt, are never tried, and everything else resolves as without them."""
    rng = random.Random(seed)
    settled = set(rng.sample(range(n), rng.randrange(n + 1) // 3))
    bad = set(rng.sample(range(n), rng.randrange(n + 1) // 4)) - settled
    stack = RangeStack(n, settled)
    rejected, tried = [], set()
    limit = max(1, int(n * limit_share))
    while stack.resolved < n:  # one transaction per pass, each up to its limit and budget
        left = budget
        top = min(n, stack.resolved + limit)
        while left > 0 and (node := stack.next(top)) is not None:
            if node.settled:
                rejected.append(node.lo)
                stack.reject(node)
                continue
            left -= 1
            tried |= set(range(node.lo, node.hi))
            attempt(stack, node, bad, rejected)
    assert rejected == sorted(settled | bad)
    assert not tried & settled
