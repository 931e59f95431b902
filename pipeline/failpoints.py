"""Failpoints: named places where a fault can be injected, for the fault-injection suite. Off by default.

Switched on by the environment, read once at import:

    MICROBATCH_FAILPOINTS="before_commit:crash@3,after_consume:sleep:200%0.1"

Each entry is `name:action[@n][%p]`: the action runs on the n-th hit of that point (default: every
hit), or with probability p on each hit. Actions:

    crash          os._exit(137), like kill -9 (no flush, no close, no goodbye)
    sleep:<ms>     block for that long (hold a transaction open, stretch a window)
    raise:<state>  raise a psycopg error with that SQLSTATE (e.g. 08006: connection lost)

When the variable is unset, `hit()` is one dictionary lookup on an empty dict: free on the hot path.
Points: after_consume, in_assign, in_revoke, mid_copy, after_lookups, before_commit, commit_ack_lost, after_db_commit,
after_dlq_produce.
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass

import psycopg
from psycopg import errors

ENV = "MICROBATCH_FAILPOINTS"
POINTS = frozenset(
    {"after_consume", "in_assign", "in_revoke", "mid_copy", "after_lookups", "before_commit", "commit_ack_lost",
     "after_db_commit", "after_dlq_produce"}
)  # fmt: skip


@dataclass
class Failpoint:
    """One armed failpoint."""

    name: str
    action: str
    argument: str | None = None
    nth: int | None = None
    probability: float | None = None
    hits: int = 0

    def due(self) -> bool:
        self.hits += 1
        if self.nth is not None:
            return self.hits == self.nth
        if self.probability is not None:
            return random.random() < self.probability  # noqa: S311 - fault schedules, not secrets
        return True


def parse(spec: str) -> dict[str, Failpoint]:
    """Parse the MICROBATCH_FAILPOINTS syntax; ValueError names the bad entry."""
    armed: dict[str, Failpoint] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        body, _, probability = entry.partition("%")
        body, _, nth = body.partition("@")
        name, _, action = body.partition(":")
        action, _, argument = action.partition(":")
        if name not in POINTS or action not in {"crash", "sleep", "raise"}:
            raise ValueError(f"{ENV}: cannot parse {entry!r} (points: {sorted(POINTS)}; actions: crash, sleep, raise)")
        if action != "crash" and not argument:
            raise ValueError(f"{ENV}: {entry!r} needs an argument (sleep:<ms> or raise:<sqlstate>)")
        armed[name] = Failpoint(
            name, action, argument or None, int(nth) if nth else None, float(probability) if probability else None
        )
    return armed


_ARMED: dict[str, Failpoint] = parse(os.environ.get(ENV, ""))


def hit(name: str) -> None:
    """Run the fault armed at `name`, if any and if due."""
    point = _ARMED.get(name)
    if point is None or not point.due():
        return
    print(f"failpoint {name}: {point.action} (hit {point.hits})", file=sys.stderr, flush=True)
    if point.action == "crash":
        os._exit(137)
    if point.action == "sleep":
        time.sleep(int(point.argument or "0") / 1000)
        return
    sqlstate = point.argument or "08006"
    try:
        error_class = errors.lookup(sqlstate)
    except KeyError:
        error_class = psycopg.OperationalError
    raise error_class(f"failpoint {name} raised SQLSTATE {sqlstate}")


def arm(spec: str) -> None:
    """Replace the armed failpoints (tests of this module only)."""
    _ARMED.clear()
    _ARMED.update(parse(spec))
