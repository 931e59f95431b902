"""The oracle can fail: its own judgement of the generator's messages, and every dead-letter defect it
must catch (a duplicate, a missing copy, a wrong reason, key, value or header, a good message)."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from consumer.workload import InvoiceWorkload, WorkloadOptions
from devstack.verify import Read
from tests.support.invoice_rules import KIND_REASON, check_kind, judge, same_row
from tests.support.oracle import Entry, Verdict, _check_dead_letters, _judge

TOPIC = "invoices-t"


def _entry(offset: int, value: bytes, *, kind: str, key: bytes = b"k", headers: list[tuple[str, bytes]] = ()) -> Entry:  # type: ignore[assignment]
    return {
        "topic": TOPIC, "partition": 0, "offset": offset, "good": kind == "good", "kind": kind, "event_id": None,
        "key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode(),
        "headers": [[name, base64.b64encode(raw).decode()] for name, raw in headers],
    }  # fmt: skip


def _letter(entry: Entry, reason: str, **changes: object) -> Read:
    key = base64.b64decode(entry["key"])
    value: bytes | None = base64.b64decode(entry["value"])
    raw = [(name, base64.b64decode(text)) for name, text in entry["headers"]]
    raw += [
        ("dlq.original.topic", entry["topic"].encode()),
        ("dlq.original.partition", str(entry["partition"]).encode()),
        ("dlq.original.offset", str(entry["offset"]).encode()),
        ("dlq.reason", reason.encode()),
    ]
    if "key" in changes:
        key = changes["key"]  # type: ignore[assignment]
    if "value" in changes:
        value = changes["value"]  # type: ignore[assignment]
    if "raw" in changes:
        raw = changes["raw"]  # type: ignore[assignment]
    headers = {name: (data or b"").decode("utf-8", "replace") for name, data in raw}
    return Read(0, 0, key, value, headers, tuple(raw))


GOOD = (
    b'{"event_id":"5b0f3a52-4a8e-4a44-9d53-0c1e4f9a7a10","invoice_id":"i","user_id":"u","item_id":"a",'
    b'"quantity":2,"unit_price":1.5,"ts":"2026-01-01T10:00:00+02:00"}'
)
BAD = b'{"quantity": NaN}'


def _without(letter: Read, name: str) -> list[tuple[str, bytes | None]]:
    return [(header, value) for header, value in letter.raw_headers if header != name]


def _verdict(ledger: list[Entry], letters: list[Read], copies_allowed: int = 1) -> Verdict:
    verdict = Verdict(events=len(ledger), copies_allowed=copies_allowed)
    judged = _judge(ledger, verdict, 1_048_576, lambda invoice: False)
    verdict.good, verdict.bad = len(judged.events), len(judged.bad_at)
    _check_dead_letters(verdict, judged, letters, TOPIC)
    return verdict


def test_every_generated_message_is_judged_as_its_kind_demands() -> None:
    workload = InvoiceWorkload(WorkloadOptions(count=3000, seed=5, bad_ratio=0.3, duplicate_ratio=0.05))
    kinds: set[str] = set()
    for message in workload.messages():
        judgement = judge(message.value)
        assert check_kind(message.kind, judgement, message.value, 1_048_576) is None, message.kind
        kinds.add(message.kind)
    assert kinds == {"good", *KIND_REASON}


def test_the_judgement_does_not_follow_the_generator_label() -> None:
    assert check_kind("good", judge(BAD), BAD, 1_048_576) is not None
    assert check_kind("nan", judge(GOOD), GOOD, 1_048_576) is not None
    assert judge(b"x" * 200, max_message_bytes=100).reason == "too_large"
    assert judge(b'{"quantity": ' + b"9" * 10_000 + b"}").reason == "invalid_json"
    assert judge(b"[" * 100_000 + b"]" * 100_000).reason == "invalid_json"


def test_a_row_must_hold_the_exact_payload() -> None:
    invoice = judge(GOOD).invoice
    assert invoice is not None
    row = (uuid.UUID("5b0f3a52-4a8e-4a44-9d53-0c1e4f9a7a10"), "i", "u", "a", 2, Decimal("1.5000"),
           datetime(2026, 1, 1, 8, tzinfo=UTC))  # fmt: skip
    assert same_row(invoice, row)
    assert not same_row(invoice, (*row[:4], 3, *row[5:]))
    assert not same_row(invoice, (*row[:5], Decimal("1.51"), row[6]))


def test_exact_dead_letters_pass() -> None:
    ledger = [_entry(0, GOOD, kind="good"), _entry(1, BAD, kind="nan", headers=[("trace", b"\xff\x00")])]
    verdict = _verdict(ledger, [_letter(ledger[1], "invalid_json")])
    assert verdict.dead_letters_exact and verdict.lost == 0 and verdict.dead_letter_duplicates == 0


@pytest.mark.parametrize(
    ("defect", "letters"),
    [
        ("missing", lambda e: []),
        ("duplicate", lambda e: [_letter(e, "invalid_json"), _letter(e, "invalid_json")]),
        ("wrong reason", lambda e: [_letter(e, "invalid_event")]),
        ("wrong key", lambda e: [_letter(e, "invalid_json", key=b"other")]),
        ("wrong value", lambda e: [_letter(e, "invalid_json", value=b'{"quantity": NaN }')]),
        ("lost header", lambda e: [_letter(e, "invalid_json", raw=_without(_letter(e, "invalid_json"), "trace"))]),
        ("another topic", lambda e: [_letter({**e, "topic": "elsewhere"}, "invalid_json")]),
    ],
)  # fmt: skip
def test_every_dead_letter_defect_is_caught(defect: str, letters: object) -> None:
    ledger = [_entry(0, GOOD, kind="good"), _entry(1, BAD, kind="nan", headers=[("trace", b"\xff\x00")])]
    verdict = _verdict(ledger, letters(ledger[1]))  # type: ignore[operator]
    ok = verdict.dead_letters_exact and verdict.lost == 0 and verdict.dead_letters == verdict.bad
    assert not ok, defect


def test_a_duplicate_copy_is_allowed_only_when_the_scenario_says_so() -> None:
    ledger = [_entry(1, BAD, kind="nan")]
    twice = [_letter(ledger[0], "invalid_json"), _letter(ledger[0], "invalid_json")]
    assert not _verdict(ledger, twice).dead_letters_exact
    allowed = _verdict(ledger, twice, copies_allowed=2)
    assert allowed.dead_letters_exact and allowed.dead_letter_duplicates == 1
    assert allowed.dead_letters == allowed.bad + allowed.dead_letter_duplicates


def test_a_good_message_in_the_dead_letter_topic_is_a_duplicate() -> None:
    ledger = [_entry(0, GOOD, kind="good")]
    verdict = _verdict(ledger, [_letter(ledger[0], "invalid_event")])
    assert verdict.duplicated == 1


def test_an_omitted_value_is_checked_by_size_and_hash() -> None:
    value = b'{"big": "' + b"x" * 300 + b'"}'
    ledger = [_entry(1, value, kind="too_large")]
    base = [(n, v) for n, v in _letter(ledger[0], "too_large").raw_headers if n != "dlq.reason"]
    base.append(("dlq.reason", b"too_large"))
    right = [*base, ("dlq.value.omitted", b"true"), ("dlq.value.bytes", str(len(value)).encode()),
             ("dlq.value.sha256", hashlib.sha256(value).hexdigest().encode())]  # fmt: skip
    wrong = [*right[:-1], ("dlq.value.sha256", hashlib.sha256(b"other").hexdigest().encode())]
    verdict = Verdict(copies_allowed=1)
    judged = _judge(ledger, verdict, 100, lambda invoice: False)
    _check_dead_letters(verdict, judged, [_letter(ledger[0], "too_large", value=None, raw=right)], TOPIC)
    assert verdict.dead_letter_mismatches == 0, verdict.details
    verdict = Verdict(copies_allowed=1)
    judged = _judge(ledger, verdict, 100, lambda invoice: False)
    _check_dead_letters(verdict, judged, [_letter(ledger[0], "too_large", value=None, raw=wrong)], TOPIC)
    assert verdict.dead_letter_mismatches == 1
