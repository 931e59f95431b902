"""User paths end to end, as the README tells users to walk them: status, check-config, `make demo`, the
"Running it" commands verbatim, and `make help` (dead-letter replay: test_dlq_replay.py)."""

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from devstack.verify import (
    caught_up,
    compare_totals,
    high_watermarks,
    load_expected,
    stored_positions,
)
from tests.support.consumer_process import MICROBATCH, ConsumerProcess, run_cli
from tests.support.services import KafkaService, wait_until
from tests.support.user_paths import create_topic, delete_topics, init_db

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


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
    init_db(service_env, invoice_pipeline)
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
        "missing_topics": [],
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
    init_db(service_env, invoice_pipeline)
    create_topic(kafka.bootstrap, topic, 2)
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
    create_topic(kafka.bootstrap, dlq, 1)
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
    delete_topics(bootstrap, DEFAULT_TOPIC, DEFAULT_DLQ)
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
    # The README's quick start has one role, the owner of a local database: init-db creates the tables.
    env = {**service_env, "DATABASE_URL": database_url}
    outputs: dict[str, str] = {}
    try:
        for argv in argvs:
            if argv[1] != "run":
                result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                                        timeout=300, check=False)  # fmt: skip
                assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
                outputs[argv[1]] = result.stdout
                continue
            outputs["run"] = _run_until_caught_up(argv, tmp_path, env, kafka.bootstrap, database_url)
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
