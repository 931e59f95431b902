"""Testcontainers as a real backend of the test fixtures: Kafka and PostgreSQL in containers of the
local images, reached through podman's Docker API socket; then a second pass of an integration
module with the whole session's services taken from containers (MICROBATCH_SERVICES=containers)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from tests.support.services import KafkaService, PostgresService

ROOT = Path(__file__).resolve().parents[2]
# The second pass runs two of this module's tests (50,000 invoice events with duplicates and poison;
# SIGKILL twice mid-stream), each judged by every check of tests/support/oracle.py.
REPEATED_MODULE = "tests/integration/test_invoices.py"


def test_kafka_and_postgres_in_containers(kafka: KafkaService, postgres: PostgresService) -> None:
    metadata = AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=30)
    assert metadata.brokers, "the broker in the container answers metadata requests"
    with psycopg.connect(postgres.url) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int, current_setting('listen_addresses')")
        version, listening = row.fetchone() or (0, "")
    assert version // 10000 == 15
    assert listening == "127.0.0.1"


@pytest.mark.timeout(900)
def test_an_integration_module_passes_with_its_services_in_containers(engine: str) -> None:
    env = {key: value for key, value in os.environ.items()
           if key not in {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"} and not key.startswith("PYTEST_")}  # fmt: skip
    env.update(DOCKER_HOST=engine, MICROBATCH_SERVICES="containers", MICROBATCH_REQUIRE_INTEGRATION="1")
    started = time.monotonic()
    argv = [sys.executable, "-m", "pytest", REPEATED_MODULE, "-k", "50k or sigkill", "-p", "no:cacheprovider",
            "-q", "--tb=short"]  # fmt: skip
    with subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as nested:
        try:
            output, _ = nested.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            # SIGTERM, not SIGKILL: the nested session's fixtures then stop their containers (tests/conftest.py).
            nested.terminate()
            output, _ = nested.communicate(timeout=120)
            pytest.fail(f"the second pass did not finish in 600 s:\n{output[-3000:]}")
    print(f"second pass of {REPEATED_MODULE} in containers: {time.monotonic() - started:.0f} s")
    # Enough of the tail to hold a failed verdict with its timeline (tests/support/timeline.py).
    assert nested.returncode == 0, output[-12000:]
    assert "(Testcontainers)" in output and "(local" not in output, output[-4000:]
    summary = re.search(r"^=*\s*(\d+ passed[^\n]*) in [\d.]+s", output, flags=re.MULTILINE)
    assert summary is not None and not re.search(r"failed|skipped|error", summary.group(1)), output[-2000:]
    assert summary.group(1).startswith("2 passed"), f"both tests of the second pass ran: {summary.group(1)}"
