"""Bisection planning: which range of rows to try next when a bulk write failed on bad data. Pure.

Ranges are resolved strictly left to right, so at any moment the rows before `resolved` are done
(written or rejected) and a transaction can commit that prefix. When a range fails it is split in
halves; when the left half of a failed range then succeeds, the right half must hold the failure,
so it is split again without being tried (one attempt saved per level). Single rows are always
tried: a leaf either succeeds or is rejected with its own error, except a row whose verdict is
already known (`settled`: a retry of a write that dead-lettered it), which is rejected untried.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Node:
    """A half-open range of row indexes [lo, hi)."""

    lo: int
    hi: int
    known_bad: bool = False
    settled: bool = False  # a single row whose verdict is already known (pipeline.sent_verdicts): never tried
    # On the left half of a failed range: its right half, which must fail if this half succeeds.
    sibling: Node | None = None

    @property
    def size(self) -> int:
        return self.hi - self.lo


class RangeStack:
    """Pending ranges, leftmost first, covering exactly the unresolved rows [resolved, n)."""

    def __init__(self, n: int, settled: Iterable[int] = ()) -> None:
        """Rows [0, n) pending as one range, or cut around the `settled` rows, each pending alone."""
        self._n = n
        nodes: list[Node] = []
        lo = 0
        for row in sorted(settled):
            if not lo <= row < n:
                raise ValueError(f"settled row {row} is not one of the {n} rows, or is given twice")
            if lo < row:
                nodes.append(Node(lo, row))
            nodes.append(Node(row, row + 1, settled=True))
            lo = row + 1
        if lo < n:
            nodes.append(Node(lo, n))
        self._pending: list[Node] = nodes[::-1]  # reversed: last = leftmost

    @property
    def resolved(self) -> int:
        """Rows before this index are resolved."""
        return self._pending[-1].lo if self._pending else self._n

    def next(self, limit: int) -> Node | None:
        """The next range to try, ending at or before `limit`; None when `limit` is reached."""
        while self._pending:
            top = self._pending[-1]
            if top.lo >= limit:
                return None
            if top.known_bad and top.size > 1:
                self._replace_top(*_halves(top))
                continue
            if top.hi > limit:
                self._replace_top(Node(top.lo, limit), Node(limit, top.hi))
                continue
            return top
        return None

    def succeed(self, node: Node) -> None:
        """`node` (the current leftmost) was written."""
        self._pop(node)
        if node.sibling is not None:
            node.sibling.known_bad = True

    def reject(self, node: Node) -> None:
        """`node` (the current leftmost, a single row) failed on its own, or is settled: it is rejected."""
        if node.size != 1:
            raise ValueError("only a single row is rejected; split larger ranges")
        self._pop(node)

    def fail(self, node: Node) -> None:
        """`node` (the current leftmost, more than one row) failed: split it in halves."""
        if node.size < 2:
            raise ValueError("a single row cannot be split; reject it")
        self._pop(node)
        left, right = _halves(node)
        self._pending.extend((right, left))

    def _pop(self, node: Node) -> None:
        if not self._pending or self._pending[-1] is not node:
            raise ValueError("only the leftmost pending range can be resolved")
        self._pending.pop()

    def _replace_top(self, left: Node, right: Node) -> None:
        self._pending.pop()
        self._pending.extend((right, left))


def _halves(node: Node) -> tuple[Node, Node]:
    """Split a range that failed (or is known to fail): the right half is bad if the left is fine."""
    mid = node.lo + node.size // 2
    right = Node(mid, node.hi)
    return Node(node.lo, mid, sibling=right), right
