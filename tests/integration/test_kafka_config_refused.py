"""A kafka_config librdkafka refuses, through every command that makes a Kafka client: one line, exit 2,
never a traceback (a KafkaException escaped where each client was made, after check-config said OK)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.consumer_process import run_cli
from tests.support.user_paths import init_db

# In every client's configuration: a value librdkafka refuses for a security setting.
BOGUS = '{"security.protocol": "bogus"}'
REFUSED = (
    'kafka_config: the Kafka client refuses it: Invalid value "bogus" for configuration property "security.protocol"'
)


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["produce", "--count", "1"],
        ["dlq", "replay"],
        ["positions", "reset", "--topic", "invoice-lines", "--to", "earliest"],
        ["run"],
    ],
    ids=lambda command: command[0] if command[0] != "dlq" else "dlq replay",
)
def test_every_command_refuses_what_librdkafka_refuses_in_one_line(
    service_env: dict[str, str], invoice_pipeline: Path, database_url: str, command: list[str]
) -> None:
    init_db(service_env, invoice_pipeline)
    env = {**service_env, "MICROBATCH_KAFKA_CONFIG": BOGUS, "MICROBATCH_STARTUP_TIMEOUT_S": "5"}
    result = run_cli(env, *command, "--pipeline", str(invoice_pipeline), timeout=60)
    printed = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in printed, printed
    assert REFUSED in printed, printed


def test_check_config_finds_it_first(service_env: dict[str, str], invoice_pipeline: Path) -> None:
    env = {**service_env, "MICROBATCH_KAFKA_CONFIG": BOGUS}
    result = run_cli(env, "check-config", "--pipeline", str(invoice_pipeline), timeout=60)
    assert result.returncode == 2 and f"FAIL kafka: invalid configuration:\n  {REFUSED}" in result.stdout, result.stdout
