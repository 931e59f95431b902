"""Page-view events and the totals `pipeline/builtin/pageviews.toml` must produce from them (pure)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

PAGES = [f"/products/{n}" for n in range(12)] + ["/", "/cart", "/checkout"]
ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7))]
REFERRERS = [None, "https://search.example/q", "https://news.example/a", "https://social.example/p"]


@dataclass
class MinuteTotals:
    views: int = 0
    min_load_ms: int | None = None
    max_load_ms: int | None = None
    last: tuple[datetime, str | None] | None = None

    def add(self, load_ms: int, referrer: str | None, viewed_at: datetime) -> None:
        self.views += 1
        self.min_load_ms = load_ms if self.min_load_ms is None else min(self.min_load_ms, load_ms)
        self.max_load_ms = load_ms if self.max_load_ms is None else max(self.max_load_ms, load_ms)
        if self.last is None or _later((viewed_at, referrer), self.last):
            self.last = (viewed_at, referrer)


def _later(new: tuple[datetime, str | None], old: tuple[datetime, str | None]) -> bool:
    """The pipeline's rule: greater time wins; on a tie a non-null, then greater, referrer wins."""
    if new[0] != old[0]:
        return new[0] > old[0]
    if old[1] is None:
        return new[1] is not None
    return new[1] is not None and new[1] > old[1]


@dataclass
class PageViewWorkload:
    seed: int
    good: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[tuple[str, datetime], MinuteTotals] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def messages(self, count: int, *, bad_every: int = 0, duplicate_every: int = 0) -> list[tuple[bytes, bytes]]:
        rng = self.rng
        start = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
        out: list[tuple[bytes, bytes]] = []
        for n in range(count):
            if bad_every and n % bad_every == bad_every - 1:
                out.append((b"bad", orjson.dumps({"view_id": str(uuid.uuid4()), "page": {}, "load_ms": -1})))
                continue
            if duplicate_every and self.good and n % duplicate_every == duplicate_every - 1:
                again = rng.choice(self.good)
                out.append((again["user"]["id"].encode(), orjson.dumps(again)))
                continue
            moment = start + timedelta(milliseconds=rng.randrange(0, 45 * 60 * 1000))
            event: dict[str, Any] = {
                "view_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "page": {"path": rng.choice(PAGES), "title": "ignored"},
                "user": {"id": f"u-{rng.randrange(500)}"},
                "load_ms": rng.randrange(20, 5000),
                "viewed_at": moment.astimezone(rng.choice(ZONES)).isoformat(timespec="milliseconds"),
            }
            referrer = rng.choice(REFERRERS)
            if referrer is not None:
                event["referrer"] = referrer
            if rng.random() < 0.5:
                event["device"] = rng.choice(["desktop", "mobile", "tablet"])
            self.good.append(event)
            viewed_at = datetime.fromisoformat(event["viewed_at"]).astimezone(UTC)
            key = (event["page"]["path"], viewed_at.replace(second=0, microsecond=0))
            self.totals.setdefault(key, MinuteTotals()).add(event["load_ms"], referrer, viewed_at)
            out.append((event["user"]["id"].encode(), orjson.dumps(event)))
        return out
