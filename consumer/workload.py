"""Seeded invoice line-item events, with bad records and producer duplicates, plus expected totals. Pure.

The totals are what the database must hold once every message is consumed: they are computed
from exactly the bytes produced, with the same decimal arithmetic PostgreSQL uses.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
OFFSETS = (
    UTC,
    timezone(timedelta(hours=2)),
    timezone(timedelta(hours=-5)),
    timezone(timedelta(hours=9)),
)

# Bad messages the decoder must reject, with the reason it gives.
BAD_KINDS: tuple[tuple[str, str], ...] = (
    ("truncated_json", "invalid_json"),
    ("nan", "invalid_json"),
    ("not_an_object", "invalid_event"),
    ("quantity_as_string", "invalid_event"),
    ("missing_item", "invalid_event"),
    ("zero_quantity", "invalid_event"),
    ("nul_in_user", "invalid_event"),
    ("price_too_precise", "invalid_event"),
    ("bad_timestamp", "invalid_event"),
    ("empty", "empty"),
    ("deep_nesting", "invalid_json"),
    ("huge_integer", "invalid_json"),
    ("infinity", "invalid_json"),
)


@dataclass(frozen=True)
class Message:
    """One message to produce; `event_id` is None for bad ones."""

    key: bytes
    value: bytes
    good: bool
    kind: str
    headers: tuple[tuple[str, bytes], ...] = ()
    event_id: str | None = None
    item_id: str | None = None
    quantity: int | None = None
    unit_price: str | None = None
    ts: str | None = None


@dataclass
class WorkloadOptions:
    count: int
    seed: int = 1
    bad_ratio: float = 0.0
    duplicate_ratio: float = 0.0
    items: int = 1000
    days: int = 30


@dataclass
class ExpectedTotals:
    """What the tables must contain after all messages are consumed."""

    messages: int = 0
    good: int = 0
    duplicates: int = 0
    bad_by_reason: Counter[str] = field(default_factory=Counter)
    inventory: dict[str, dict[str, Any]] = field(default_factory=dict)
    daily: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def bad(self) -> int:
        return sum(self.bad_by_reason.values())

    def add_good(self, item: str, quantity: int, price: Decimal, moment: datetime) -> None:
        self.good += 1
        inv = self.inventory.setdefault(item, {"quantity": 0, "last_event_at": moment})
        inv["quantity"] += quantity
        inv["last_event_at"] = max(inv["last_event_at"], moment)
        day = moment.astimezone(UTC).date().isoformat()
        row = self.daily.setdefault((item, day), {"units": 0, "revenue": Decimal(0), "lines": 0})
        row["units"] += quantity
        row["revenue"] += quantity * price
        row["lines"] += 1

    def to_json(self) -> bytes:
        return orjson.dumps(self.as_dict(), option=orjson.OPT_INDENT_2)

    def as_dict(self) -> dict[str, Any]:
        """The expected totals as JSON-ready values (decimals as exact strings, instants in UTC)."""
        return {
            "messages": self.messages,
            "good": self.good,
            "duplicates": self.duplicates,
            "bad": self.bad,
            "bad_by_reason": dict(sorted(self.bad_by_reason.items())),
            "transactions": self.good,
            "inventory": {
                item: {
                    "quantity": v["quantity"],
                    "last_event_at": v["last_event_at"].astimezone(UTC).isoformat(),
                }
                for item, v in sorted(self.inventory.items())
            },
            "item_sales_daily": {
                f"{item}|{day}": {
                    "units": v["units"],
                    "revenue": str(v["revenue"]),
                    "lines": v["lines"],
                }
                for (item, day), v in sorted(self.daily.items())
            },
        }


def _with(event: dict[str, Any], **changes: Any) -> bytes:
    return orjson.dumps({**event, **changes})


def _spliced(event: dict[str, Any], text: bytes) -> bytes:
    return orjson.dumps(event).replace(b'"quantity":', b'"quantity":' + text + b',"q":', 1)


# How each bad kind is made from a good event.
BAD_VALUES: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "truncated_json": lambda e: orjson.dumps(e)[:-7],
    "nan": lambda e: _spliced(e, b"NaN"),
    "not_an_object": lambda e: orjson.dumps([e]),
    "quantity_as_string": lambda e: _with(e, quantity=str(e["quantity"])),
    "missing_item": lambda e: orjson.dumps({k: v for k, v in e.items() if k != "item_id"}),
    "zero_quantity": lambda e: _with(e, quantity=0),
    "nul_in_user": lambda e: _with(e, user_id="user\u0000x"),
    "price_too_precise": lambda e: _with(e, unit_price=1.234567),
    "bad_timestamp": lambda e: _with(e, ts="2026-13-45 25:61"),
    "empty": lambda e: b"",
    "deep_nesting": lambda e: b"[" * 100_000 + b"]" * 100_000,
    "huge_integer": lambda e: _spliced(e, b"9" * 10_000),
    "infinity": lambda e: _spliced(e, b"Infinity"),
}


def line_amounts(rng: random.Random, days: int) -> tuple[int, float, datetime]:
    """An invoice line's quantity (mostly sales, some returns), unit price (0 to 4 decimals) and
    moment (within `days` of EPOCH, milliseconds, one of OFFSETS), drawn from `rng` in this order."""
    quantity = rng.randint(1, 20) if rng.random() < 0.9 else -rng.randint(1, 5)
    price = round(rng.uniform(0.5, 999.99), rng.choice((0, 1, 2, 2, 2, 4)))
    moment = EPOCH + timedelta(seconds=rng.uniform(0, days * 86400))
    moment = moment.astimezone(rng.choice(OFFSETS)).replace(microsecond=(moment.microsecond // 1000) * 1000)
    return quantity, price, moment


class InvoiceWorkload:
    """Generates messages in a reproducible order for a seed."""

    def __init__(self, options: WorkloadOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)  # noqa: S311 - reproducible test data, not secrets
        # Headers come from a second generator, so that the events of a seed stay what they were.
        self._header_rng = random.Random(options.seed + 1_000_003)  # noqa: S311 - test data
        self.totals = ExpectedTotals()
        self._sent_good: list[Message] = []

    def messages(self) -> Iterator[Message]:
        """`options.count` messages in total (good, bad and duplicates), updating `totals` as it goes."""
        opts, rng = self.options, self.rng
        for n in range(opts.count):
            roll = rng.random()
            if roll < opts.bad_ratio:
                message = self._bad(n)
                self.totals.bad_by_reason[self._reason(message.kind)] += 1
            elif roll < opts.bad_ratio + opts.duplicate_ratio and self._sent_good:
                message = rng.choice(self._sent_good)
                self.totals.duplicates += 1
            else:
                message, event = self._good(n)
                self._count_good(message, event)
                if len(self._sent_good) < 10_000:
                    self._sent_good.append(message)
            self.totals.messages += 1
            yield self._with_headers(message)

    def _reason(self, kind: str) -> str:
        """The dead-letter reason a bad message of `kind` must get."""
        return dict(BAD_KINDS)[kind]

    def _count_good(self, message: Message, event: dict[str, Any]) -> None:
        """Add a good (first-sent) event to the expected totals."""
        price = Decimal(message.unit_price or "0")
        self.totals.add_good(event["item_id"], event["quantity"], price, datetime.fromisoformat(event["ts"]))

    def _with_headers(self, message: Message) -> Message:
        """Some messages carry headers (a trace id; rarely a forged `dlq.reason` that a dead letter
        must overwrite): the dead-letter topic must keep the original ones byte for byte."""
        roll = self._header_rng.random()
        if roll < 0.5:
            return message
        headers: tuple[tuple[str, bytes], ...] = (("trace-id", self._header_rng.randbytes(8)),)
        if roll > 0.99:
            headers += (("dlq.reason", b"forged"), ("source", b"\xff\x00binary"))
        return replace(message, headers=headers)

    def _event(self, n: int) -> dict[str, Any]:
        rng, opts = self.rng, self.options
        quantity, price, moment = line_amounts(rng, opts.days)
        return {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "invoice_id": f"inv-{self.options.seed}-{n // 5}",
            "user_id": f"user-{rng.randrange(10_000)}",
            "item_id": f"item-{rng.randrange(opts.items):05d}",
            "quantity": quantity,
            "unit_price": price,
            "ts": moment.isoformat(timespec="milliseconds"),
            "channel": rng.choice(("web", "store", "app")),  # unknown fields are ignored
        }

    def _good(self, n: int) -> tuple[Message, dict[str, Any]]:
        event = self._event(n)
        value = orjson.dumps(event)
        message = Message(
            key=event["invoice_id"].encode(),
            value=value,
            good=True,
            kind="good",
            event_id=event["event_id"],
            item_id=event["item_id"],
            quantity=event["quantity"],
            unit_price=repr(event["unit_price"])
            if isinstance(event["unit_price"], float)
            else str(event["unit_price"]),
            ts=event["ts"],
        )
        return message, event

    def _bad(self, n: int) -> Message:
        kind, _ = self.rng.choice(BAD_KINDS)
        event = self._event(n)
        return Message(key=event["invoice_id"].encode(), value=BAD_VALUES[kind](event), good=False, kind=kind)
