"""The image a user deploys (Dockerfile, built by `make images` on the local base) run as a container
against Kafka and PostgreSQL containers: 50,000 invoice events with duplicates and poison, a SIGKILL
mid-stream and a restart, a SIGTERM mid-stream (`podman stop`) and a restart; totals, dead letters and
positions exact (tests/support/oracle.py). The container turns healthy, runs as UID 10001 and has a
read-only root filesystem."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import KafkaException

from devstack.engine import run
from devstack.images import microbatch_image
from devstack.process import free_port
from devstack.verify import high_watermarks, stored_positions
from tests.support.consumer_process import run_cli
from tests.support.oracle import check, read_ledger
from tests.support.podman import Container
from tests.support.runtime_role import OWNER_ENV, RUNTIME_ROLE
from tests.support.services import KafkaService, wait_until

PARTITIONS = 4
ROOT = Path(__file__).resolve().parents[2]
# A digest of the consumer and pipeline packages' Python files, as imported (names relative to each package).
SOURCE_DIGEST = (
    "import hashlib, pathlib, consumer, pipeline\n"
    "digest = hashlib.sha256()\n"
    "for package in (consumer, pipeline):\n"
    "    root = pathlib.Path(package.__file__).parent\n"
    "    for path in sorted(root.rglob('*.py')):\n"
    "        digest.update(f'{package.__name__}/{path.relative_to(root)}'.encode() + path.read_bytes())\n"
    "print(digest.hexdigest())"
)
SHUTDOWN_S = 10
UID = "10001"


@pytest.fixture
def mounted(invoice_pipeline: Path) -> Iterator[Path]:
    """The test's pipeline file where UID 10001 inside the container can read it (pytest's tmp dirs are 0700)."""
    where = Path(tempfile.mkdtemp(prefix="microbatch-image-test-", dir="/tmp"))
    where.chmod(0o755)
    shutil.copy(invoice_pipeline, where / "pipeline.toml")
    (where / "pipeline.toml").chmod(0o644)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def _env(service_env: dict[str, str], port: int) -> dict[str, str]:
    keep = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "MICROBATCH_KAFKA_CONFIG")
    return {key: service_env[key] for key in keep} | {
        "MICROBATCH_METRICS_HOST": "127.0.0.1", "MICROBATCH_METRICS_PORT": str(port), "PYTHONWARNINGS": "error",
        "MICROBATCH_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_S),
        # Small windows: the drain takes long enough for a kill to land mid-stream.
        "MICROBATCH_MAX_RECORDS": "500", "MICROBATCH_MAX_WAIT_MS": "100",
    }  # fmt: skip


def _rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM transactions").fetchone()
    return int(row[0]) if row else 0


def _produce(
    service_env: dict[str, str], pipeline: Path, ledger: Path, count: int, seed: int, rate: int | None = None
) -> None:
    paced = ["--rate", str(rate)] if rate else []
    result = run_cli(service_env, "produce", "--pipeline", str(pipeline), "--count", str(count), "--partitions",
                     str(PARTITIONS), "--ledger", str(ledger), "--duplicate-ratio", "0.01", "--bad-ratio", "0.005",
                     "--seed", str(seed), *paced)  # fmt: skip
    assert result.returncode == 0, result.stderr


def _wait_for_rows(database_url: str, rows: int, production: Future[None], what: str) -> None:
    """Wait until the raw table holds `rows` rows while `production` runs in the background; a
    production that ended first, failed, says why here rather than as a timeout."""
    wait_until(lambda: production.done() or _rows(database_url) >= rows, timeout=120, what=what)
    if production.done():
        production.result()


@pytest.mark.timeout(900)
def test_the_image_drains_exactly_through_sigkill_and_sigterm(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    mounted: Path, unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    image, consumer = microbatch_image(), Container.named("consumer")
    name = consumer.name
    env = _env(service_env, free_port())
    volume = ("--read-only", "-v", f"{mounted}:/config:ro")
    topic, group = f"invoices-{unique}", f"group-{unique}"
    names = [item for key in env for item in ("-e", key)]  # values through podman's environment, not argv
    # init-db as the owner, granting the runtime role the consumer then runs as.
    init = run("run", "--rm", "--network", "host", *volume, *names, image, "init-db", "--pipeline",
               "/config/pipeline.toml", "--grant-to", RUNTIME_ROLE, check=False,
               env={**env, "DATABASE_URL": service_env[OWNER_ENV]})  # fmt: skip
    assert init.returncode == 0, init.stderr
    ledgers = [tmp_path / "first.jsonl", tmp_path / "rest.jsonl", tmp_path / "second.jsonl"]
    _produce(service_env, invoice_pipeline, ledgers[0], 5_000, seed=3)  # the topic, and work from the start

    def caught_up() -> bool:
        return stored_positions(database_url, group) == high_watermarks(kafka.bootstrap, topic, PARTITIONS)

    at_kill = 0
    producing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="produce")
    try:
        consumer.start(image, "run", "--pipeline", "/config/pipeline.toml", env=env, options=volume)
        # Identity and root filesystem, from the running container.
        assert consumer.exec("id", "-u").stdout.strip() == UID
        # The code in the image is this checkout's (a build cache once installed an older wheel).
        installed = consumer.exec("/app/.venv/bin/python", "-c", SOURCE_DIGEST).stdout.strip()
        assert installed == subprocess.run([sys.executable, "-c", SOURCE_DIGEST], capture_output=True, text=True,
                                           check=True, timeout=60, cwd=ROOT).stdout.strip()  # fmt: skip
        assert consumer.inspect()["HostConfig"]["ReadonlyRootfs"] is True
        denied = consumer.exec("/app/.venv/bin/python", "-c", "open('/app/written', 'w')")
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied.stderr
        wait_until(consumer.healthy, timeout=60, what="the container's health check to pass", interval=1.0)

        # SIGKILL mid-stream, then the same container started again. The rest of the first stream is
        # produced in the background at a pace the consumer keeps up with, as the second is below: all
        # produced before the start, a fast consumer could have written it whole before the kill.
        rest = producing.submit(_produce, service_env, invoice_pipeline, ledgers[1], 45_000, seed=5, rate=5_000)
        _wait_for_rows(database_url, 6_000, rest, "the rest of the first stream to start")
        run("kill", "-s", "KILL", name)
        at_kill = _rows(database_url)
        assert at_kill < 49_000, f"the kill landed after the drain ({at_kill} rows): nothing was mid-stream"
        wait_until(lambda: not consumer.running(), timeout=30, what="the killed container to stop")
        assert consumer.state()["ExitCode"] == 137
        run("start", name)
        rest.result(timeout=120)  # all of it produced before "caught up" means anything
        wait_until(caught_up, timeout=240, what="the restarted container to drain the first stream")

        # SIGTERM (podman stop, with more time than shutdown_timeout_s) mid-stream: exit 0 within it. The
        # stream is produced in the background at a pace the consumer keeps up with: produced at full
        # speed, it could be written whole before a count taken after it, and the stop then hit nothing.
        before = _rows(database_url)
        second = producing.submit(_produce, service_env, invoice_pipeline, ledgers[2], 30_000, seed=4, rate=5_000)
        _wait_for_rows(database_url, before + 1_000, second, "the second stream to start")
        started = time.monotonic()
        run("stop", "-t", str(SHUTDOWN_S * 3), name, timeout=SHUTDOWN_S * 3 + 30)
        stopped_in = time.monotonic() - started
        at_stop = _rows(database_url)
        assert at_stop < before + 29_000, f"the stop landed after the drain ({at_stop - before} rows): not mid-stream"
        assert consumer.state()["ExitCode"] == 0, consumer.logs()[-3000:]
        assert stopped_in < SHUTDOWN_S, f"podman stop took {stopped_in:.1f} s (shutdown_timeout_s {SHUTDOWN_S})"
        assert "shut down cleanly" in consumer.logs()
        run("start", name)
        second.result(timeout=120)  # all of it produced (its ledger written) before "caught up" means anything
        wait_until(caught_up, timeout=240, what="the container to drain the second stream after its restart")
        wait_until(consumer.healthy, timeout=60, what="the restarted container's health check", interval=1.0)
    finally:
        producing.shutdown(wait=True)
        logs = consumer.logs()
        consumer.remove()
    verdict = check(read_ledger(ledgers), database_url, kafka.bootstrap, topic, f"{topic}.dlq", group, PARTITIONS,
                    dead_letter_copies_allowed=3)  # fmt: skip
    assert verdict.ok, verdict.details
    assert verdict.ledger_duplicates > 300 and verdict.bad > 200, "the workload has duplicates and poison"
    assert "Traceback" not in logs
    print(f"image {image}: {verdict.good} rows, {verdict.bad} dead letters; SIGKILL at {at_kill} rows; "
          f"SIGTERM at {at_stop - before} of the second stream's rows, exit 0 in {stopped_in:.1f} s")  # fmt: skip


def test_produce_as_pid_1_stops_at_once_on_sigterm(kafka: KafkaService, unique: str) -> None:
    # PID 1 ignores a signal it has no handler for: without its own, `podman stop` would wait out its
    # timeout and then kill. `dlq replay` and the other short commands share the handler (consumer/cli.py).
    producer = Container.named("produce")
    name = producer.name
    try:
        producer.start(microbatch_image(), "produce", "--topic", f"pid1-{unique}", "--count", "1000000", "--rate",
                       "200", "--partitions", "1", env={"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap},
                       options=("--read-only",))  # fmt: skip
        topic = f"pid1-{unique}"

        def producing() -> bool:
            try:
                return sum(high_watermarks(kafka.bootstrap, topic, 1).values()) > 0
            except KafkaException:  # the topic is not there yet
                return False

        wait_until(producing, timeout=60, what="produce to start producing")
        started = time.monotonic()
        run("stop", "-t", "30", name, timeout=60)
        stopped_in = time.monotonic() - started
        assert producer.state()["ExitCode"] == 143, producer.logs()[-2000:]
        assert stopped_in < 10, f"podman stop took {stopped_in:.1f} s: SIGTERM was not handled"
        assert "microbatch: interrupted (SIGTERM): stopped" in producer.logs()
    finally:
        producer.remove()
