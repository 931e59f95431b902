"""`microbatch dlq replay` end to end: a dry run changes nothing, filters select exactly the matching
dead letters, and replayed events are written exactly once."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

from devstack.verify import (
    IncompleteRead,
    Read,
    caught_up,
    high_watermarks,
    read_topic,
)
from tests.support.consumer_process import ConsumerProcess, run_cli
from tests.support.kafka_io import produce_exact
from tests.support.services import KafkaService, wait_until
from tests.support.user_paths import count_rows, create_topic, init_db

SUMMARY = re.compile(r"scanned (\d+) dead letters in (\S+); (\d+) matched; (would replay|replayed) (\d+)")
Outgoing = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]


def _replay(env: dict[str, str], pipeline: Path, *args: str) -> dict[str, Any]:
    """Run `microbatch dlq replay`; return what its output reports."""
    result = run_cli(env, "dlq", "replay", "--pipeline", str(pipeline), *args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    found = SUMMARY.search(result.stdout)
    assert found is not None, result.stdout
    scanned, topic, matched, verb, done = found.groups()
    lines = result.stdout.splitlines()
    reasons = {m.group(1): int(m.group(2)) for m in (re.fullmatch(r"  reason (\S+): (\d+)", x) for x in lines) if m}
    targets = {m.group(1): int(m.group(2)) for m in (re.fullmatch(r"  to (\S+): (\d+)", x) for x in lines) if m}
    return {"scanned": int(scanned), "topic": topic, "matched": int(matched), "verb": verb, "count": int(done),
            "reasons": reasons, "targets": targets}  # fmt: skip


@dataclass(frozen=True)
class Bad:
    """A message the consumer must dead-letter, with the reason it must give (its trace-id header is its key)."""

    key: bytes
    value: bytes
    reason: str


def _event(item: str, quantity: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()), "invoice_id": f"inv-{item}", "user_id": "u-1", "item_id": item,
        "quantity": quantity, "unit_price": 2.5, "ts": "2026-02-03T04:05:06+00:00",
    }  # fmt: skip


BAD_VALUES: dict[str, Callable[[str], bytes]] = {
    "invalid_json": lambda tag: b'{"event_id": "' + tag.encode() + b'", "quantity": ',
    "empty": lambda tag: b"",
    "invalid_event": lambda tag: orjson.dumps(_event(f"item-{tag}", 0)),  # quantity must be nonzero
    "db_rejected": lambda tag: orjson.dumps(_event("item-13", 13)),  # refused by CHECK (quantity <> 13)
}


def _batch(tag: str, good: int, bad: dict[str, int]) -> tuple[list[Outgoing], list[Bad]]:
    """`good` valid events and, per reason, that many bad ones; every message carries a trace-id header."""
    out: list[Outgoing] = []
    letters: list[Bad] = []
    for n in range(good):
        trace = f"{tag}-good-{n}".encode()
        out.append((trace, orjson.dumps(_event(f"item-{tag}", 3)), [("trace-id", trace)]))
    for reason, count in bad.items():
        for n in range(count):
            trace = f"{tag}-{reason}-{n}".encode()
            value = BAD_VALUES[reason](f"{tag}-{n}")
            out.append((trace, value, [("trace-id", trace)]))
            letters.append(Bad(trace, value, reason))
    return out, letters


def _letters(letters: list[Read]) -> dict[tuple[bytes | None, bytes | None], str]:
    """Dead letters as {(key, value): reason}."""
    return {(r.key, r.value): r.headers.get("dlq.reason", "?") for r in letters}


def _letters_in(bootstrap: str, topic: str) -> int:
    """How many messages `topic` holds, for a poll: -1 while a read comes back incomplete (IncompleteRead:
    a metadata error other than an unknown topic, or the topic not read to its end in 10 s): not yet,
    rather than a failure of the poll."""
    try:
        return len(read_topic(bootstrap, topic, timeout=10))
    except IncompleteRead:
        return -1


def _snapshot(bootstrap: str, topic: str) -> list[Read]:
    """Every message of `topic`, in (partition, offset) order."""
    return sorted(read_topic(bootstrap, topic), key=lambda r: (r.partition, r.offset))


def _expected_letters(letters: list[Bad]) -> dict[tuple[bytes | None, bytes | None], str]:
    return {(letter.key, letter.value): letter.reason for letter in letters}


def _assert_replayed(bootstrap: str, target: str, dlq: str, letters: list[Read], want: list[Bad]) -> None:
    """`target` holds exactly the dead letters `want`: original key, value and headers, plus dlq.replayed_from
    naming the dead letter (one of `letters`, read from `dlq`) each came from, and no other dlq.* header."""
    got = read_topic(bootstrap, target)
    assert Counter((r.key, r.value) for r in got) == Counter((w.key, w.value) for w in want)
    by_position = {(r.partition, r.offset): r for r in letters}
    for message in got:
        names = [name for name, _ in message.raw_headers]
        assert names == ["trace-id", "dlq.replayed_from"], message.raw_headers
        assert message.raw_headers[0][1] == message.key
        source_topic, partition, offset = message.headers["dlq.replayed_from"].rsplit("/", 2)
        assert source_topic == dlq
        source = by_position[(int(partition), int(offset))]
        assert (source.key, source.value) == (message.key, message.value)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def test_dlq_replay_dry_run_changes_nothing_and_filters_select_exactly_the_matching_letters(
    kafka: KafkaService,
    database_url: str,
    service_env: dict[str, str],
    invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess],
    unique: str,
) -> None:
    topic, dlq, group = f"invoices-{unique}", f"invoices-{unique}.dlq", f"group-{unique}"
    init_db(service_env, invoice_pipeline)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions ADD CONSTRAINT not_thirteen CHECK (quantity <> 13)")
    create_topic(kafka.bootstrap, topic, 2)
    first, first_bad = _batch("a", 4, {"invalid_json": 2, "empty": 1, "invalid_event": 1, "db_rejected": 2})
    produce_exact(kafka.bootstrap, topic, first)
    consumer = consumer_factory(service_env, invoice_pipeline)
    wait_until(lambda: _letters_in(kafka.bootstrap, dlq) >= len(first_bad), timeout=60, what="batch a's letters")
    boundary = datetime.now(UTC)
    second, second_bad = _batch("b", 3, {"invalid_json": 1, "invalid_event": 2, "db_rejected": 3})
    produce_exact(kafka.bootstrap, topic, second)
    every = first_bad + second_bad
    wait_until(lambda: _letters_in(kafka.bootstrap, dlq) >= len(every), timeout=60, what="batch b's letters")
    wait_until(lambda: caught_up(database_url, group, kafka.bootstrap, topic, 2), timeout=60, what="caught up")
    letters = _snapshot(kafka.bootstrap, dlq)
    assert _letters(letters) == _expected_letters(every)
    assert len(letters) == len(every), "a message was dead-lettered twice"
    # The time filters below rely on batch a failing before `boundary` and batch b after it.
    failed_at = {(r.key, r.value): datetime.fromisoformat(r.headers["dlq.failed_at"]) for r in letters}
    assert all(failed_at[(b.key, b.value)] < boundary for b in first_bad)
    assert all(failed_at[(b.key, b.value)] >= boundary for b in second_bad)
    assert count_rows(database_url, "SELECT count(*) FROM transactions") == 7

    # --dry-run: reports everything it would do, produces nothing anywhere.
    source_before = high_watermarks(kafka.bootstrap, topic, 2)
    summary = _replay(service_env, invoice_pipeline, "--dry-run")
    assert summary == {
        "scanned": 12, "topic": dlq, "matched": 12, "verb": "would replay", "count": 12,
        "reasons": {"db_rejected": 5, "empty": 1, "invalid_event": 3, "invalid_json": 3}, "targets": {topic: 12},
    }  # fmt: skip
    assert high_watermarks(kafka.bootstrap, topic, 2) == source_before

    # --reason (repeatable): exactly the letters with those reasons, with their original bytes.
    targets = {name: f"replayed-{name}-{unique}" for name in ("reason", "since", "until")}
    for target in targets.values():
        create_topic(kafka.bootstrap, target, 1)
    summary = _replay(service_env, invoice_pipeline, "--reason", "invalid_json", "--reason", "empty",
                         "--to", targets["reason"])  # fmt: skip
    assert (summary["verb"], summary["count"], summary["reasons"]) == ("replayed", 4, {"empty": 1, "invalid_json": 3})
    _assert_replayed(kafka.bootstrap, targets["reason"], dlq, letters,
                     [b for b in every if b.reason in {"invalid_json", "empty"}])  # fmt: skip

    # --since: only batch b; --until with --reason: only batch a's db_rejected.
    summary = _replay(service_env, invoice_pipeline, "--since", _rfc3339(boundary), "--to", targets["since"])
    assert (summary["scanned"], summary["count"]) == (12, len(second_bad))
    _assert_replayed(kafka.bootstrap, targets["since"], dlq, letters, second_bad)
    summary = _replay(service_env, invoice_pipeline, "--until", _rfc3339(boundary), "--reason", "db_rejected",
                         "--to", targets["until"])  # fmt: skip
    assert (summary["count"], summary["reasons"]) == (2, {"db_rejected": 2})
    _assert_replayed(
        kafka.bootstrap, targets["until"], dlq, letters, [b for b in first_bad if b.reason == "db_rejected"]
    )

    # Nothing was replayed to the source topic (not by the dry run either), so the consumer saw nothing new.
    assert high_watermarks(kafka.bootstrap, topic, 2) == source_before
    assert _snapshot(kafka.bootstrap, dlq) == letters
    assert consumer.terminate() == 0, consumer.output()


def test_dlq_replay_after_the_fix_writes_db_rejected_events_exactly_once(
    kafka: KafkaService,
    database_url: str,
    service_env: dict[str, str],
    invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess],
    unique: str,
) -> None:
    topic, dlq, group = f"invoices-{unique}", f"invoices-{unique}.dlq", f"group-{unique}"
    init_db(service_env, invoice_pipeline)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions ADD CONSTRAINT not_thirteen CHECK (quantity <> 13)")
    create_topic(kafka.bootstrap, topic, 2)
    messages, bad = _batch("c", 5, {"db_rejected": 4, "invalid_json": 1})
    produce_exact(kafka.bootstrap, topic, messages)
    rejected_ids = sorted(json.loads(b.value)["event_id"] for b in bad if b.reason == "db_rejected")
    consumer = consumer_factory(service_env, invoice_pipeline)

    def settled() -> bool:
        return caught_up(database_url, group, kafka.bootstrap, topic, 2)

    wait_until(lambda: _letters_in(kafka.bootstrap, dlq) >= len(bad) and settled(), timeout=60,
               what="the dead letters and the positions")  # fmt: skip
    letters = _snapshot(kafka.bootstrap, dlq)
    assert _letters(letters) == _expected_letters(bad)
    assert len(letters) == len(bad)
    thirteen = "SELECT count(*) FROM transactions WHERE quantity = 13"
    assert count_rows(database_url, thirteen) == 0
    assert count_rows(database_url, "SELECT count(*) FROM transactions") == 5

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions DROP CONSTRAINT not_thirteen")
    marks = high_watermarks(kafka.bootstrap, topic, 2)
    summary = _replay(service_env, invoice_pipeline, "--reason", "db_rejected")
    assert (summary["count"], summary["reasons"], summary["targets"]) == (4, {"db_rejected": 4}, {topic: 4})
    assert sum(high_watermarks(kafka.bootstrap, topic, 2).values()) == sum(marks.values()) + 4
    wait_until(lambda: count_rows(database_url, thirteen) >= 4 and settled(), timeout=60, what="the replayed events")
    with psycopg.connect(database_url) as conn:
        ids = sorted(str(row[0]) for row in conn.execute("SELECT event_id FROM transactions WHERE quantity = 13"))
    assert ids == rejected_ids

    # Replaying the same dead letters again must not write or count them twice (dedupe key: event_id).
    summary = _replay(service_env, invoice_pipeline, "--reason", "db_rejected")
    assert summary["count"] == 4
    assert sum(high_watermarks(kafka.bootstrap, topic, 2).values()) == sum(marks.values()) + 8
    wait_until(settled, timeout=60, what="the second replay to be consumed")
    assert count_rows(database_url, thirteen) == 4
    assert count_rows(database_url, "SELECT count(*) FROM transactions") == 9
    assert count_rows(database_url, "SELECT quantity FROM inventory WHERE item_id = 'item-13'") == 4 * 13
    assert count_rows(database_url, "SELECT lines FROM item_sales_daily WHERE item_id = 'item-13'") == 4
    # The replayed events were good now: nothing went back to the dead-letter topic.
    assert _snapshot(kafka.bootstrap, dlq) == letters
    assert consumer.terminate() == 0, consumer.output()
    counts = consumer.final_counts()
    assert counts is not None, consumer.output()
    assert counts["duplicates skipped"] == 4


def _letter(original: tuple[str, int, int], value: bytes | None, attempts: int, *extra: tuple[str, bytes]) -> Outgoing:
    """A dead letter as the consumer writes it: the original's key, value and headers plus ours."""
    topic, partition, offset = original
    headers = [("trace-id", f"t-{offset}".encode()), ("dlq.original.topic", topic.encode()),
               ("dlq.original.partition", str(partition).encode()), ("dlq.original.offset", str(offset).encode()),
               ("dlq.reason", b"invalid_json"), ("dlq.attempts", str(attempts).encode()), *extra]  # fmt: skip
    return (f"t-{offset}".encode(), value, headers)


def test_dlq_replay_sends_each_original_once_and_points_to_the_originals_of_letters_without_their_value(
    kafka: KafkaService, service_env: dict[str, str], invoice_pipeline: Path, unique: str
) -> None:
    topic, dlq, target = f"invoices-{unique}", f"invoices-{unique}.dlq", f"replayed-{unique}"
    create_topic(kafka.bootstrap, dlq, 1)
    create_topic(kafka.bootstrap, target, 1)
    huge = b"h" * 2_000_000
    omitted = (("dlq.value.omitted", b"true"), ("dlq.value.bytes", str(len(huge)).encode()),
               ("dlq.value.sha256", hashlib.sha256(huge).hexdigest().encode()))  # fmt: skip
    produce_exact(kafka.bootstrap, dlq, [
        _letter((topic, 0, 5), b"{twice", 1),
        _letter((topic, 0, 6), b"{once", 1),
        _letter((topic, 0, 5), b"{twice", 2),  # the same message again: a flush retried after its produce
        _letter((topic, 1, 9), None, 1, *omitted),  # too large for the dead-letter topic: value omitted
        _letter((topic, 1, 9), None, 2, *omitted),
        _letter((topic, 0, 6), b"{again", 1),  # the same coordinates in a re-created topic: another message
    ])  # fmt: skip

    def run(*args: str) -> str:
        result = run_cli(service_env, "dlq", "replay", "--pipeline", str(invoice_pipeline), "--to", target, *args,
                         timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    for output, verb in ((run("--dry-run"), "would replay"), (run(), "replayed")):
        assert f"scanned 6 dead letters in {dlq}; 6 matched; {verb} 3\n" in output, output
        assert "skipped 2 extra copies of messages already replayed in this run" in output, output
        assert "skipped 1 dead letter(s) sent without their value or key" in output, output
        digest = hashlib.sha256(huge).hexdigest()
        assert f"original {topic}[1]@9 ({len(huge)} bytes, sha256 {digest}, no value in the letter)" in output
    replayed = read_topic(kafka.bootstrap, target)
    assert sorted((r.key, r.value) for r in replayed) == [(b"t-5", b"{twice"), (b"t-6", b"{again"), (b"t-6", b"{once")]
