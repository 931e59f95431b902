"""The oracle: checks I1-I4 from the producer's ledger, the tables and the dead-letter topic.

The ledger lists every message the broker acknowledged: its coordinates, the generator's label
and its exact key, value and headers. The oracle judges each message itself from those bytes
(`tests.support.invoice_rules`, not product code), then, after the consumer caught up:

  I1 no loss: every good event is in the raw table; every bad message is in the dead-letter
     topic at least once;
  I2 no duplicates: every raw row is explained by exactly one good ledger entry, with the same
     payload; no good message is dead-lettered; dead-letter copies beyond the first are counted
     as their own figure (the contract allows "twice, never zero" only when the dead-letter path
     itself failed: `dead_letter_copies_allowed`);
  I3 exact aggregates: every summary row equals the sum over the good events, computed here;
  I4 positions: every stored position equals its partition's high watermark.
Every dead letter must carry the reason its message must get, and the original key, value and
headers byte for byte (for a value dead-lettered without it: its size and sha256 headers).
(I5, recovery, is measured by the scenario: tests.support.chaos.)

What a message must become, which rows and summaries that makes, and how to read them back, are
the pipeline's: a `Contract` (the invoice pipeline's, `INVOICES`, unless a check names another,
e.g. tests.support.vendor_oracle's). A pipeline with lookups also checks its reference tables.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import orjson
import psycopg

from devstack.verify import Read, high_watermarks, read_topic, stored_positions
from tests.support.invoice_rules import DEFAULT_MAX_MESSAGE_BYTES, Invoice, check_kind, judge, same_row, totals

Entry = dict[str, Any]
Coordinates = tuple[str, int, int]
E = TypeVar("E")  # a good event as the contract reads it (an Invoice, a VendorLine)

# The headers a dead letter sets itself (any incoming header of the same name is replaced).
DEAD_LETTER_HEADERS = frozenset(
    {
        "dlq.original.topic", "dlq.original.partition", "dlq.original.offset", "dlq.reason", "dlq.error.class",
        "dlq.error.message", "dlq.error.sqlstate", "dlq.consumer.group", "dlq.failed_at", "dlq.attempts",
        "dlq.value.omitted", "dlq.value.bytes", "dlq.value.sha256", "dlq.key.omitted", "dlq.key.bytes",
        "dlq.key.sha256", "dlq.headers.omitted", "dlq.headers.unreadable",
    }
)  # fmt: skip


def read_ledger(paths: Iterable[Path]) -> list[Entry]:
    entries: list[Entry] = []
    for path in paths:
        if path.exists():
            entries += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return entries


def entry_bytes(entry: Entry, name: str) -> bytes | None:
    text = entry.get(name)
    return None if text is None else base64.b64decode(text)


def entry_headers(entry: Entry) -> list[tuple[str, bytes | None]]:
    return [(name, None if value is None else base64.b64decode(value)) for name, value in entry.get("headers", [])]


@dataclass
class Verdict:
    """What the oracle found; `ok` when every invariant holds."""

    events: int = 0
    good: int = 0
    bad: int = 0
    lost: int = 0
    duplicated: int = 0
    row_mismatches: int = 0
    aggregate_mismatches: int = 0
    positions_ok: bool = True
    dead_letters: int = 0
    dead_letter_duplicates: int = 0
    dead_letter_mismatches: int = 0
    dead_letters_missing: int = 0
    label_mismatches: int = 0
    most_copies: int = 0
    copies_allowed: int = 1
    ledger_duplicates: int = 0
    # Lookups: reference rows that are not exactly one per distinct normalised key of the written
    # events (a key created twice, an orphan, a wrong spelling), and how many rows each table holds.
    reference_mismatches: int = 0
    references: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    @property
    def dead_letters_exact(self) -> bool:
        return self.dead_letter_mismatches == 0 and self.most_copies <= self.copies_allowed

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.row_mismatches == 0
            and self.aggregate_mismatches == 0
            and self.reference_mismatches == 0
            and self.label_mismatches == 0
            and self.positions_ok
            and self.dead_letters_exact
            and self.dead_letters == self.bad + self.dead_letter_duplicates
        )


@dataclass(frozen=True)
class Ruling(Generic[E]):
    """What one message must become: `event` written (good), or dead-lettered with `reason`; and a
    `complaint` when the generator's label disagrees with the bytes."""

    reason: str | None
    event: E | None
    complaint: str | None


WrittenRow = tuple[str, Coordinates, tuple[Any, ...]]  # (event id, kafka coordinates, payload)


class Contract(Protocol[E]):
    """One pipeline's contract, as the oracle applies it; written apart from the product."""

    def rule(self, value: bytes | None, kind: str, max_message_bytes: int) -> Ruling[E]:
        """Judge one message from its bytes (and compare with the generator's label `kind`)."""
        ...

    def event_id(self, event: E) -> str: ...

    def rows(self, conn: psycopg.Connection[Any]) -> list[WrittenRow]:
        """Every row of the raw table."""
        ...

    def same_row(self, event: E, payload: tuple[Any, ...]) -> bool:
        """Whether a row's payload holds exactly this event."""
        ...

    def summaries(self, conn: psycopg.Connection[Any]) -> dict[str, dict[Any, Any]]:
        """Every summary table: key → values, as written."""
        ...

    def totals(self, events: Iterable[E]) -> dict[str, dict[Any, Any]]:
        """Every summary table: key → values, as they must be for these events (each counted once)."""
        ...

    def check_references(self, verdict: Verdict, events: Sequence[E], conn: psycopg.Connection[Any]) -> None:
        """The lookups' reference tables against the written events (nothing for a pipeline without)."""
        ...


class InvoiceContract:
    """pipeline/builtin/invoices.toml (tests.support.invoice_rules)."""

    def rule(self, value: bytes | None, kind: str, max_message_bytes: int) -> Ruling[Invoice]:
        judgement = judge(value, max_message_bytes=max_message_bytes)
        return Ruling(judgement.reason, judgement.invoice, check_kind(kind, judgement, value, max_message_bytes))

    def event_id(self, event: Invoice) -> str:
        return str(event.event_id)

    def rows(self, conn: psycopg.Connection[Any]) -> list[WrittenRow]:
        rows = conn.execute(
            "SELECT event_id, invoice_id, user_id, item_id, quantity, unit_price, occurred_at, "
            "kafka_topic, kafka_partition, kafka_offset FROM transactions"
        ).fetchall()
        return [(str(row[0]), (str(row[7]), int(row[8]), int(row[9])), tuple(row[:7])) for row in rows]

    def same_row(self, event: Invoice, payload: tuple[Any, ...]) -> bool:
        return same_row(event, payload)

    def summaries(self, conn: psycopg.Connection[Any]) -> dict[str, dict[Any, Any]]:
        inventory = {
            str(r[0]): (int(r[1]), r[2]) for r in conn.execute("SELECT item_id, quantity, last_event_at FROM inventory")
        }
        daily = {
            (str(r[0]), r[1].isoformat()): (int(r[2]), Decimal(r[3]), int(r[4]))
            for r in conn.execute("SELECT item_id, day, units, revenue, lines FROM item_sales_daily")
        }
        return {"inventory": inventory, "item_sales_daily": daily}

    def totals(self, events: Iterable[Invoice]) -> dict[str, dict[Any, Any]]:
        want = totals(events)
        return {"inventory": dict(want.inventory), "item_sales_daily": dict(want.daily)}

    def check_references(self, verdict: Verdict, events: Sequence[Invoice], conn: psycopg.Connection[Any]) -> None:
        return None  # no lookups


INVOICES = InvoiceContract()


@dataclass
class Judged(Generic[E]):
    """The ledger, judged: good events by event id, and what each bad message must become.

    Coordinates map to lists: a topic deleted and re-created (T12) reuses them, once per incarnation.
    """

    events: dict[str, E] = field(default_factory=dict)  # event id → the event (first copy)
    good_at: dict[Coordinates, list[E]] = field(default_factory=dict)
    bad_at: dict[Coordinates, list[tuple[str, Entry]]] = field(default_factory=dict)  # → [(reason, entry)]
    copies: int = 0  # good messages in all, duplicates included

    def bad(self) -> list[tuple[Coordinates, int]]:
        """Every bad message, as (coordinates, index among the incarnations at those coordinates)."""
        return [(coordinates, n) for coordinates, found in self.bad_at.items() for n in range(len(found))]


def _judge(
    ledger: list[Entry],
    verdict: Verdict,
    max_message_bytes: int,
    rejected_by_database: Callable[[Any], bool],
    contract: Contract[Any] = INVOICES,
) -> Judged[Any]:
    judged: Judged[Any] = Judged()
    for entry in ledger:
        ruling = contract.rule(entry_bytes(entry, "value"), entry["kind"], max_message_bytes)
        if ruling.complaint is not None:
            verdict.label_mismatches += 1
            if verdict.label_mismatches <= 3:
                where = f"{entry['topic']}[{entry['partition']}]@{entry['offset']}"
                verdict.details.append(f"label: {where}: {ruling.complaint}")
        coordinates = (entry["topic"], entry["partition"], entry["offset"])
        event = ruling.event
        if event is not None and rejected_by_database(event):
            judged.bad_at.setdefault(coordinates, []).append(("db_rejected", entry))
        elif event is not None:
            judged.copies += 1
            judged.events.setdefault(contract.event_id(event), event)
            judged.good_at.setdefault(coordinates, []).append(event)
        else:
            judged.bad_at.setdefault(coordinates, []).append((ruling.reason or "?", entry))
    return judged


def check(
    ledger: list[Entry],
    database_url: str,
    bootstrap: str,
    topic: str,
    dead_letter_topic: str,
    group: str,
    partitions: int,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    rejected_by_database: Callable[[Any], bool] = lambda event: False,
    dead_letter_copies_allowed: int = 1,
    earlier_dead_letters: Sequence[Read] = (),
    contract: Contract[Any] = INVOICES,
) -> Verdict:
    """Apply I1-I4 and the exact dead-letter check to one stream of events of the pipeline `contract`
    describes (invoices by default). `earlier_dead_letters`: what the dead-letter topic held before
    it was deleted (a scenario that deletes it)."""
    verdict = Verdict(events=len(ledger), copies_allowed=dead_letter_copies_allowed)
    judged = _judge(ledger, verdict, max_message_bytes, rejected_by_database, contract)
    verdict.good, verdict.bad = len(judged.events), len(judged.bad())
    verdict.ledger_duplicates = judged.copies - len(judged.events)
    _check_rows(verdict, judged, database_url, contract)
    letters = [*earlier_dead_letters, *read_topic(bootstrap, dead_letter_topic, timeout=120)]
    _check_dead_letters(verdict, judged, letters, topic)
    _check_positions(verdict, database_url, bootstrap, topic, group, partitions)
    return verdict


def _check_rows(verdict: Verdict, judged: Judged[E], database_url: str, contract: Contract[E]) -> None:
    """I1 for good events, I2 for rows, I3 for the summaries; and the lookups' reference tables."""
    with psycopg.connect(database_url) as conn:
        rows = contract.rows(conn)
        summaries = contract.summaries(conn)
        contract.check_references(verdict, list(judged.events.values()), conn)
    written: Counter[str] = Counter()
    unexplained: list[str] = []
    for event_id, coordinates, payload in rows:
        candidates = judged.good_at.get(coordinates, [])
        written[event_id] += 1
        if not candidates:
            unexplained.append(f"row at {coordinates} matches no good ledger message")
        elif not any(contract.same_row(event, payload) for event in candidates):
            verdict.row_mismatches += 1
            unexplained.append(f"row at {coordinates} differs from its message: {payload}")
    twice = sum(count - 1 for count in written.values())
    verdict.duplicated += twice + sum(1 for line in unexplained if "matches no" in line)
    if twice:
        verdict.details.append(f"I2: {twice} event ids written more than once")
    if unexplained:
        verdict.details.append(f"I2: {len(unexplained)} rows not explained exactly, e.g. {unexplained[:3]}")
    missing = {event_id: event for event_id, event in judged.events.items() if event_id not in written}
    verdict.lost += len(missing)
    if missing:
        where = sorted(c for c, found in judged.good_at.items() if any(contract.event_id(e) in missing for e in found))
        verdict.details.append(f"I1: {len(missing)} good events not written, e.g. at {where[:5]}")
    want = contract.totals(judged.events.values())
    mismatched = [line for table, rows_of in summaries.items() for line in differences(rows_of, want.get(table, {}))]
    verdict.aggregate_mismatches = len(mismatched)
    if mismatched:
        verdict.details.append(f"I3: {len(mismatched)} summary rows differ, e.g. {mismatched[:3]}")


def _check_dead_letters(verdict: Verdict, judged: Judged[Any], letters: list[Read], topic: str) -> None:
    """Every bad message dead-lettered at least once, exactly as it came, with the right reason."""
    verdict.dead_letters = len(letters)
    copies: Counter[tuple[Coordinates, int]] = Counter()
    problems: list[str] = []
    for letter in letters:
        headers = letter.headers
        try:
            coordinates = (
                headers["dlq.original.topic"],
                int(headers["dlq.original.partition"]),
                int(headers["dlq.original.offset"]),
            )
        except (KeyError, ValueError):
            problems.append(f"dead letter at offset {letter.offset} without its original coordinates")
            continue
        if coordinates[0] != topic:
            problems.append(f"a dead letter of another topic: {coordinates}")
            continue
        found = judged.bad_at.get(coordinates, [])
        matches = [n for n, (reason, entry) in enumerate(found) if not _letterdifferences(letter, reason, entry)]
        if matches:
            copies[(coordinates, matches[0])] += 1
            continue
        if coordinates in judged.good_at and not found:
            verdict.duplicated += 1
            verdict.details.append(f"I2: good message {coordinates} dead-lettered ({headers.get('dlq.reason')})")
            continue
        if not found:
            problems.append(f"dead letter of {coordinates}, which the ledger does not hold")
            continue
        reason, entry = found[0]
        copies[(coordinates, 0)] += 1
        problems += [f"{coordinates}: {p}" for p in _letterdifferences(letter, reason, entry)]
    verdict.dead_letter_mismatches = len(problems)
    verdict.dead_letter_duplicates = sum(count - 1 for count in copies.values())
    verdict.most_copies = max(copies.values(), default=0)
    if problems:
        verdict.details.append(f"DLQ: {len(problems)} dead letters not as they must be, e.g. {problems[:3]}")
    not_dead = sorted(c for c in judged.bad() if copies[c] == 0)
    verdict.lost += len(not_dead)
    verdict.dead_letters_missing = len(not_dead)
    if not_dead:
        verdict.details.append(f"I1: {len(not_dead)} bad messages not dead-lettered, e.g. {not_dead[:3]}")
    if verdict.most_copies > verdict.copies_allowed:
        verdict.details.append(
            f"DLQ: {verdict.dead_letter_duplicates} extra copies, up to {verdict.most_copies} of one message "
            f"(allowed: {verdict.copies_allowed})"
        )


def _letterdifferences(letter: Read, reason: str, entry: Entry) -> list[str]:
    headers = letter.headers
    found: list[str] = []
    if headers.get("dlq.reason") != reason:
        found.append(f"reason {headers.get('dlq.reason')}, must be {reason}")
    key, value = entry_bytes(entry, "key"), entry_bytes(entry, "value")
    if letter.key != key:
        found.append("key differs from the original")
    if headers.get("dlq.value.omitted") == "true":
        original = value or b""
        if letter.value not in (None, b""):
            found.append("value omitted but present")
        if headers.get("dlq.value.bytes") != str(len(original)):
            found.append(f"dlq.value.bytes {headers.get('dlq.value.bytes')} != {len(original)}")
        if headers.get("dlq.value.sha256") != hashlib.sha256(original).hexdigest():
            found.append("dlq.value.sha256 differs from the original's")
    elif (letter.value or b"") != (value or b""):
        found.append("value differs from the original")
    kept = [(name, raw) for name, raw in letter.raw_headers if name not in DEAD_LETTER_HEADERS]
    original_headers = [(name, raw) for name, raw in entry_headers(entry) if name not in DEAD_LETTER_HEADERS]
    if kept != original_headers:
        found.append(f"original headers {original_headers} came back as {kept}")
    return found


def _check_positions(
    verdict: Verdict, database_url: str, bootstrap: str, topic: str, group: str, partitions: int
) -> None:
    stored = stored_positions(database_url, group)
    high = high_watermarks(bootstrap, topic, partitions)
    behind = {pid: (stored.get(pid, 0), mark) for pid, mark in high.items() if mark > 0 and stored.get(pid, 0) != mark}
    verdict.positions_ok = not behind
    if behind:
        verdict.details.append(f"I4: stored positions differ from high watermarks: {behind}")


def differences(actual: dict[Any, Any], expected: dict[Any, Any]) -> list[str]:
    keys = set(actual) | set(expected)
    return [f"{key}: got {actual.get(key)} want {expected.get(key)}" for key in sorted(keys, key=str)
            if actual.get(key) != expected.get(key)]  # fmt: skip
