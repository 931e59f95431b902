"""Bisection planning: left-to-right resolution, inference that saves attempts, and its cost."""

from __future__ import annotations

import math
import random

import pytest

from pipeline.bisect import Node, RangeStack


def attempt(stack: RangeStack, node: Node, bad: set[int], rejected: list[int]) -> None:
    """One statement over `node`, as the writer resolves it: written, split, or its one row rejected."""
    if bad & set(range(node.lo, node.hi)):
        if node.size == 1:
            rejected.append(node.lo)
            stack.reject(node)
        else:
            stack.fail(node)
    else:
        stack.succeed(node)


def run(n: int, bad: set[int], limit: int | None = None, budget: int = 10**9) -> tuple[list[int], int, int]:
    """Simulate the writer: returns (rejected rows, attempts, resolved prefix)."""
    stack = RangeStack(n)
    rejected: list[int] = []
    attempts = 0
    while budget > 0 and (node := stack.next(limit if limit is not None else n)) is not None:
        budget -= 1
        attempts += 1
        attempt(stack, node, bad, rejected)
    return rejected, attempts, stack.resolved


def test_clean_batch_is_one_attempt() -> None:
    assert run(10_000, set()) == ([], 1, 10_000)


@pytest.mark.parametrize("bad", [0, 1, 4_999, 5_000, 9_998, 9_999])
def test_one_bad_row_costs_logarithmic_attempts(bad: int) -> None:
    rejected, attempts, resolved = run(10_000, {bad})
    assert rejected == [bad]
    assert resolved == 10_000
    assert attempts <= 2 * math.ceil(math.log2(10_000)) + 1


def test_many_bad_rows_are_all_found_and_nothing_else() -> None:
    bad = {3, 4, 100, 777, 778, 779, 9_000}
    rejected, _, resolved = run(10_000, bad)
    assert rejected == sorted(bad)
    assert resolved == 10_000


def test_every_row_bad_rejects_every_row() -> None:
    rejected, _, _ = run(37, set(range(37)))
    assert rejected == list(range(37))


def test_budget_stops_at_a_resolved_prefix() -> None:
    rejected, attempts, resolved = run(1024, {5, 900}, budget=16)
    assert attempts == 16
    assert rejected == [5]
    assert resolved == 64  # [0, 64) is done: 5 rejected, the rest written


def test_a_budget_below_the_depth_resolves_nothing_but_keeps_what_it_learned() -> None:
    stack = RangeStack(1024)
    for _ in range(3):
        node = stack.next(1024)
        assert node is not None
        stack.fail(node)
    assert stack.resolved == 0
    node = stack.next(1024)
    assert node is not None and (node.lo, node.hi) == (0, 128)


@pytest.mark.parametrize("seed", range(40))
def test_slices_after_whole_range_transactions_find_every_bad_row_and_always_progress(seed: int) -> None:
    # The writer's transactions: a few over everything left, then slices of `budget` rows, each with
    # `budget` attempts; pending ranges (some known bad, with siblings) cross the slices' limits.
    rng = random.Random(seed)
    n, budget = rng.randrange(1, 600), rng.choice((2, 3, 4, 8, 64))
    bad = {row for row in range(n) if rng.random() < rng.choice((0.01, 0.1, 0.5, 1.0))}
    stack, rejected, transactions = RangeStack(n), [], 0
    while stack.resolved < n:
        before = stack.resolved
        sliced = transactions >= 2
        limit = min(n, before + budget) if sliced else n
        attempts = budget
        while attempts > 0 and (node := stack.next(limit)) is not None:
            attempts -= 1
            assert before <= node.lo < node.hi <= limit
            if not bad & set(range(node.lo, node.hi)):
                stack.succeed(node)
            elif node.size == 1:
                rejected.append(node.lo)
                stack.reject(node)
            else:
                stack.fail(node)
        # A transaction over everything may spend its budget above the first row; a slice may not.
        assert stack.resolved > before or not sliced, "every slice resolves at least one row"
        transactions += 1
    assert rejected == sorted(bad)


def test_limit_splits_ranges_so_single_rows_can_go_one_by_one() -> None:
    stack = RangeStack(10)
    node = stack.next(1)
    assert node is not None and (node.lo, node.hi) == (0, 1)
    stack.succeed(node)
    assert stack.resolved == 1
    assert stack.next(1) is None


def test_only_the_leftmost_range_can_be_resolved() -> None:
    stack = RangeStack(4)
    node = stack.next(4)
    assert node is not None
    stack.fail(node)
    right_half = stack.next(4)
    assert right_half is not None
    with pytest.raises(ValueError, match="single row"):
        stack.reject(right_half)


def test_empty_batch_is_resolved() -> None:
    stack = RangeStack(0)
    assert stack.resolved == 0 and stack.next(0) is None
