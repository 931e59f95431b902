"""User paths end to end, as the README tells users to walk them: dead-letter replay, status, check-config,
`make demo`, the "Running it" commands verbatim, and `make help`."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, LiteralString

import orjson
import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from devstack.verify import (
    Read,
    caught_up,
    compare_totals,
    high_watermarks,
    load_expected,
    read_topic,
    stored_positions,
)
from tests.support.consumer_process import MICROBATCH, ConsumerProcess, run_cli
from tests.support.kafka_io import produce_exact
from tests.support.services import KafkaService, wait_until

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SUMMARY = re.compile(r"scanned (\d+) dead letters in (\S+); (\d+) matched; (would replay|replayed) (\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")

Outgoing = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]


# ---------------------------------------------------------------------------------------------------------
# helpers


def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(timeout=30)
    wait_until(lambda: topic in admin.list_topics(timeout=10).topics, timeout=30, what=f"topic {topic} to exist")


def _delete_topics(bootstrap: str, *topics: str) -> None:
    """Delete the topics that exist and wait until the broker no longer lists them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = [topic for topic in topics if topic in admin.list_topics(timeout=10).topics]
    for future in admin.delete_topics(existing).values() if existing else ():
        future.result(timeout=30)
    wait_until(
        lambda: not set(topics) & set(admin.list_topics(timeout=10).topics),
        timeout=60,
        what=f"topics {topics} to be deleted",
    )


def _count(database_url: str, query: LiteralString) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _init_db(env: dict[str, str], pipeline: Path) -> None:
    result = run_cli(env, "init-db", "--pipeline", str(pipeline))
    assert result.returncode == 0, result.stdout + result.stderr


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


# ---------------------------------------------------------------------------------------------------------
# 1. microbatch dlq replay


def test_dlq_replay_dry_run_changes_nothing_and_filters_select_exactly_the_matching_letters(
    kafka: KafkaService,
    database_url: str,
    service_env: dict[str, str],
    invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess],
    unique: str,
) -> None:
    topic, dlq, group = f"invoices-{unique}", f"invoices-{unique}.dlq", f"group-{unique}"
    _init_db(service_env, invoice_pipeline)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions ADD CONSTRAINT not_thirteen CHECK (quantity <> 13)")
    _create_topic(kafka.bootstrap, topic, 2)
    first, first_bad = _batch("a", 4, {"invalid_json": 2, "empty": 1, "invalid_event": 1, "db_rejected": 2})
    produce_exact(kafka.bootstrap, topic, first)
    consumer = consumer_factory(service_env, invoice_pipeline)
    wait_until(lambda: len(read_topic(kafka.bootstrap, dlq)) >= len(first_bad), timeout=60, what="batch a's letters")
    boundary = datetime.now(UTC)
    second, second_bad = _batch("b", 3, {"invalid_json": 1, "invalid_event": 2, "db_rejected": 3})
    produce_exact(kafka.bootstrap, topic, second)
    every = first_bad + second_bad
    wait_until(lambda: len(read_topic(kafka.bootstrap, dlq)) >= len(every), timeout=60, what="batch b's letters")
    wait_until(lambda: caught_up(database_url, group, kafka.bootstrap, topic, 2), timeout=60, what="caught up")
    letters = _snapshot(kafka.bootstrap, dlq)
    assert _letters(letters) == _expected_letters(every)
    assert len(letters) == len(every), "a message was dead-lettered twice"
    # The time filters below rely on batch a failing before `boundary` and batch b after it.
    failed_at = {(r.key, r.value): datetime.fromisoformat(r.headers["dlq.failed_at"]) for r in letters}
    assert all(failed_at[(b.key, b.value)] < boundary for b in first_bad)
    assert all(failed_at[(b.key, b.value)] >= boundary for b in second_bad)
    assert _count(database_url, "SELECT count(*) FROM transactions") == 7

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
        _create_topic(kafka.bootstrap, target, 1)
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
    _init_db(service_env, invoice_pipeline)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions ADD CONSTRAINT not_thirteen CHECK (quantity <> 13)")
    _create_topic(kafka.bootstrap, topic, 2)
    messages, bad = _batch("c", 5, {"db_rejected": 4, "invalid_json": 1})
    produce_exact(kafka.bootstrap, topic, messages)
    rejected_ids = sorted(json.loads(b.value)["event_id"] for b in bad if b.reason == "db_rejected")
    consumer = consumer_factory(service_env, invoice_pipeline)

    def settled() -> bool:
        return caught_up(database_url, group, kafka.bootstrap, topic, 2)

    wait_until(lambda: len(read_topic(kafka.bootstrap, dlq)) >= len(bad) and settled(), timeout=60,
               what="the dead letters and the positions")  # fmt: skip
    letters = _snapshot(kafka.bootstrap, dlq)
    assert _letters(letters) == _expected_letters(bad)
    assert len(letters) == len(bad)
    thirteen = "SELECT count(*) FROM transactions WHERE quantity = 13"
    assert _count(database_url, thirteen) == 0
    assert _count(database_url, "SELECT count(*) FROM transactions") == 5

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions DROP CONSTRAINT not_thirteen")
    marks = high_watermarks(kafka.bootstrap, topic, 2)
    summary = _replay(service_env, invoice_pipeline, "--reason", "db_rejected")
    assert (summary["count"], summary["reasons"], summary["targets"]) == (4, {"db_rejected": 4}, {topic: 4})
    assert sum(high_watermarks(kafka.bootstrap, topic, 2).values()) == sum(marks.values()) + 4
    wait_until(lambda: _count(database_url, thirteen) >= 4 and settled(), timeout=60, what="the replayed events")
    with psycopg.connect(database_url) as conn:
        ids = sorted(str(row[0]) for row in conn.execute("SELECT event_id FROM transactions WHERE quantity = 13"))
    assert ids == rejected_ids

    # Replaying the same dead letters again must not write or count them twice (dedupe key: event_id).
    summary = _replay(service_env, invoice_pipeline, "--reason", "db_rejected")
    assert summary["count"] == 4
    assert sum(high_watermarks(kafka.bootstrap, topic, 2).values()) == sum(marks.values()) + 8
    wait_until(settled, timeout=60, what="the second replay to be consumed")
    assert _count(database_url, thirteen) == 4
    assert _count(database_url, "SELECT count(*) FROM transactions") == 9
    assert _count(database_url, "SELECT quantity FROM inventory WHERE item_id = 'item-13'") == 4 * 13
    assert _count(database_url, "SELECT lines FROM item_sales_daily WHERE item_id = 'item-13'") == 4
    # The replayed events were good now: nothing went back to the dead-letter topic.
    assert _snapshot(kafka.bootstrap, dlq) == letters
    assert consumer.terminate() == 0, consumer.output()
    counts = consumer.final_counts()
    assert counts is not None, consumer.output()
    assert counts["duplicates skipped"] == 4


# ---------------------------------------------------------------------------------------------------------
# 2. microbatch status


def test_status_of_a_caught_up_consumer_text_and_json(
    kafka: KafkaService,
    database_url: str,
    service_env: dict[str, str],
    invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess],
    unique: str,
    tmp_path: Path,
) -> None:
    topic, dlq, group, partitions = f"invoices-{unique}", f"invoices-{unique}.dlq", f"group-{unique}", 3
    _init_db(service_env, invoice_pipeline)
    expected_file = tmp_path / "expected.json"
    produced = run_cli(service_env, "produce", "--pipeline", str(invoice_pipeline), "--count", "3000",
                       "--partitions", str(partitions), "--bad-ratio", "0.02", "--seed", "17",
                       "--expected", str(expected_file))  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    expected = load_expected(expected_file)
    assert expected["bad"] > 20
    consumer = consumer_factory(service_env, invoice_pipeline)
    wait_until(lambda: caught_up(database_url, group, kafka.bootstrap, topic, partitions), timeout=90,
               what="the consumer to catch up")  # fmt: skip
    marks = high_watermarks(kafka.bootstrap, topic, partitions)
    assert sum(marks.values()) == 3000

    def status() -> dict[str, Any]:
        result = run_cli(service_env, "status", "--json", "--pipeline", str(invoice_pipeline), timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        loaded: dict[str, Any] = json.loads(result.stdout)
        return loaded

    # The Kafka commit is advisory and asynchronous: wait for it, then compare everything exactly.
    wait_until(lambda: all(p["kafka_committed"] == p["high_watermark"] for p in status()["partitions"]),
               timeout=30, what="the advisory Kafka commits")  # fmt: skip
    assert status() == {
        "group": group,
        "partitions": [
            {"topic": topic, "partition": p, "stored_position": marks[(topic, p)],
             "kafka_committed": marks[(topic, p)], "high_watermark": marks[(topic, p)], "lag": 0}
            for p in range(partitions)
        ],
        "dead_letter_topic": dlq,
        "dead_letters": expected["bad"],
    }  # fmt: skip

    text = run_cli(service_env, "status", "--pipeline", str(invoice_pipeline), timeout=60)
    assert text.returncode == 0, text.stdout + text.stderr
    assert f"group {group}" in text.stdout
    rows = [
        [cell.strip() for cell in line.strip("│┃|").split("│")]
        for line in text.stdout.splitlines()
        if line.startswith("│") and re.search(r"│\s*\d+\s*│", line)
    ]
    assert sorted(tuple(row[1:6]) for row in rows) == [
        (str(p), str(marks[(topic, p)]), str(marks[(topic, p)]), str(marks[(topic, p)]), "0") for p in range(partitions)
    ], text.stdout
    assert "total lag: 0 messages" in text.stdout
    assert f"dead-letter topic {dlq}: {expected['bad']:,} messages" in text.stdout
    assert stored_positions(database_url, group) == marks
    assert consumer.terminate() == 0, consumer.output()
    # Each row must name its topic in full: output captured or piped (80 columns) is still read by people
    # and by grep, and a pipeline may consume several topics with a common prefix.
    assert [row[0] for row in rows] == [topic] * partitions, f"status truncates the topic column:\n{text.stdout}"


# ---------------------------------------------------------------------------------------------------------
# 3. microbatch check-config

CHECKS = ("configuration", "pipeline", "kafka", "topic {topic}", "dead-letter topic {dlq}", "database")


def _check_lines(stdout: str) -> list[tuple[str, str, str]]:
    """(mark, what, detail) of every check line; the last line is the verdict."""
    found = [re.fullmatch(r"(ok  |FAIL) ([^:]+): (.*)", line) for line in stdout.splitlines()[:-1]]
    assert all(found), stdout
    return [(m.group(1).strip(), m.group(2), m.group(3)) for m in found if m]


def test_check_config_passes_with_one_ok_line_per_check(
    kafka: KafkaService, service_env: dict[str, str], invoice_pipeline: Path, unique: str, tmp_path: Path
) -> None:
    topic, dlq = f"invoices-{unique}", f"invoices-{unique}.dlq"
    names = [name.format(topic=topic, dlq=dlq) for name in CHECKS]
    _init_db(service_env, invoice_pipeline)
    _create_topic(kafka.bootstrap, topic, 2)
    result = run_cli(service_env, "check-config", "--pipeline", str(invoice_pipeline), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "configuration OK"
    lines = _check_lines(result.stdout)
    assert [(mark, what) for mark, what, _ in lines] == [("ok", name) for name in names]
    details = {what: detail for _, what, detail in lines}
    assert details["pipeline"] == "'invoices': 7 fields, 3 tables"
    assert details["kafka"] == f"broker reachable at {kafka.bootstrap}"
    assert details[f"topic {topic}"] == "2 partitions"
    assert details[f"dead-letter topic {dlq}"] == "does not exist yet: `microbatch run` creates it"
    assert "Traceback" not in result.stdout + result.stderr

    # The same through a config file (the positional FILE), once the dead-letter topic exists.
    _create_topic(kafka.bootstrap, dlq, 1)
    config = tmp_path / "microbatch.toml"
    config.write_text(f"pipeline = {json.dumps(str(invoice_pipeline))}\nmax_records = 2000\n")
    result = run_cli(service_env, "check-config", str(config), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = _check_lines(result.stdout)
    assert [(mark, what) for mark, what, _ in lines] == [("ok", name) for name in names]
    assert dict((what, detail) for _, what, detail in lines)[f"dead-letter topic {dlq}"] == "exists"
    assert result.stdout.splitlines()[-1] == "configuration OK"


# ---------------------------------------------------------------------------------------------------------
# 4. make demo's code path, small


@pytest.fixture
def public_scratch() -> Iterator[Path]:
    """A directory under /tmp that the postgres user can enter (pytest's own are 0700)."""
    scratch = Path(tempfile.mkdtemp(prefix="microbatch-user-path-", dir="/tmp"))
    scratch.chmod(0o755)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_demo_with_a_small_count_verifies_every_summary(public_scratch: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROBATCH_")}
    env["PYTHONPATH"] = str(ROOT)
    try:
        demo = subprocess.run(
            [sys.executable, "-m", "devstack.demo", "--count", "3000"],
            cwd=public_scratch, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "devstack", "down"],
            cwd=public_scratch, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert "all summaries verified" in output, output
    assert "3,000 invoice events" in output
    assert "Traceback" not in output
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (public_scratch / ".devstack").exists()


# ---------------------------------------------------------------------------------------------------------
# 5. The README's "Running it" commands, verbatim

DEFAULT_TOPIC, DEFAULT_DLQ, DEFAULT_GROUP, DEFAULT_PARTITIONS = (
    "invoice-lines", "invoice-lines.dlq", "microbatch-invoices", 4
)  # fmt: skip
# Lines of the block that other tests cover (services of their own, sourcing their addresses).
NOT_RUN = ("make up", "set -a; . .devstack/env; set +a", "make down")


def _sh_blocks(text: str) -> list[tuple[str, list[str]]]:
    """Every ```sh block of a Markdown text with the heading it sits under."""
    blocks: list[tuple[str, list[str]]] = []
    heading, inside, lines = "", False, list[str]()
    for line in text.splitlines():
        if not inside and line.startswith("#"):
            heading = line.strip()
        elif not inside and line.strip() == "```sh":
            inside, lines = True, []
        elif inside and line.strip() == "```":
            inside = False
            blocks.append((heading, lines))
        elif inside:
            lines.append(line)
    return blocks


def _commands(line: str) -> str:
    """The command of a line without its trailing comment."""
    return " ".join(shlex.split(line, comments=True))


def _drop_default_topics(bootstrap: str) -> None:
    _delete_topics(bootstrap, DEFAULT_TOPIC, DEFAULT_DLQ)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if any(g.group_id == DEFAULT_GROUP for g in admin.list_consumer_groups().result(timeout=30).valid):
        admin.delete_consumer_groups([DEFAULT_GROUP])[DEFAULT_GROUP].result(timeout=30)


def _run_until_caught_up(argv: list[str], cwd: Path, env: dict[str, str], bootstrap: str, database_url: str) -> str:
    """Start `microbatch run` in the background, wait until its stored positions reach the default topic's
    high watermarks, SIGTERM it and expect exit 0; return its output."""
    marks = high_watermarks(bootstrap, DEFAULT_TOPIC, DEFAULT_PARTITIONS)
    assert sum(marks.values()) == 50_000
    log = cwd / "run.log"
    with log.open("wb") as out:
        consumer = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: stored_positions(database_url, DEFAULT_GROUP) == marks or consumer.poll() is not None,
            timeout=120, what="`microbatch run` to catch up",
        )  # fmt: skip
        assert consumer.poll() is None, log.read_text()
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(timeout=60) == 0, log.read_text()
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait(timeout=30)
    return log.read_text()


def test_the_readme_running_it_commands_work_as_written(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    blocks = [lines for heading, lines in _sh_blocks(README.read_text()) if heading == "## Running it"]
    assert len(blocks) == 1, "README.md has no ```sh block under ## Running it"
    commands = [_commands(line) for line in blocks[0] if _commands(line)]
    skipped = [command for command in commands if not command.startswith(".venv/bin/microbatch ")]
    assert skipped == [_commands(line) for line in NOT_RUN], "the block has commands this test does not run"
    argvs = [[str(MICROBATCH), *shlex.split(c)[1:]] for c in commands if c.startswith(".venv/bin/microbatch ")]
    assert [argv[1] for argv in argvs] == ["init-db", "produce", "run", "status"]

    _drop_default_topics(kafka.bootstrap)  # a leftover of an earlier run in this session would skew the totals
    outputs: dict[str, str] = {}
    try:
        for argv in argvs:
            if argv[1] != "run":
                result = subprocess.run(argv, cwd=tmp_path, env=service_env, capture_output=True, text=True,
                                        timeout=300, check=False)  # fmt: skip
                assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
                outputs[argv[1]] = result.stdout
                continue
            outputs["run"] = _run_until_caught_up(argv, tmp_path, service_env, kafka.bootstrap, database_url)
        expected = load_expected(tmp_path / "expected.json")
        assert expected["messages"] == 50_000 and expected["bad"] > 0 and expected["duplicates"] > 0
        assert [check for check in compare_totals(database_url, expected) if not check.ok] == []
        assert "shut down cleanly" in outputs["run"]
        assert "Warning" not in outputs["run"], outputs["run"]
        assert "total lag: 0 messages" in outputs["status"], outputs["status"]
        assert f"dead-letter topic {DEFAULT_DLQ}: {expected['bad']:,} messages" in outputs["status"]
        assert f"group {DEFAULT_GROUP}" in outputs["status"]
    finally:
        _drop_default_topics(kafka.bootstrap)


# ---------------------------------------------------------------------------------------------------------
# 6. make help


def test_make_help_describes_every_make_target_the_readme_mentions() -> None:
    result = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    described = {}
    for line in ANSI.sub("", result.stdout).splitlines():
        found = re.fullmatch(r"\s+([A-Za-z0-9_-]+)\s+(\S.*)", line)
        if found:
            described[found.group(1)] = found.group(2).strip()
    mentioned = {
        shlex.split(line, comments=True)[1]
        for _, lines in _sh_blocks(README.read_text())
        for line in lines
        if line.startswith("make ")
    }
    assert {"demo", "test", "up", "down", "help", "check", "unit", "chaos", "bench", "docs"} <= mentioned
    missing = sorted(target for target in mentioned if not described.get(target))
    assert missing == [], f"`make help` does not describe {missing}:\n{result.stdout}"
