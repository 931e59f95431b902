"""Settings from env and file, refused Kafka overrides, and clear messages for mistakes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from consumer.cli import main, parser
from consumer.kafka_config import check_passthrough, consumer_config, producer_config
from consumer.settings import LIVENESS_MARGIN_S, ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)
    import os

    for key in list(os.environ):
        if key.startswith("MICROBATCH_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    settings = load_settings()
    assert (settings.max_records, settings.max_bytes, settings.max_wait_ms) == (
        5000,
        8 * 1024 * 1024,
        500,
    )
    assert settings.auto_offset_reset == "earliest"
    assert settings.pipeline == "invoices"


def test_env_beats_file_and_plain_aliases_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('max_records = 10\nmax_wait_ms = 900\nkafka_bootstrap_servers = "file:9092"\n')
    monkeypatch.setenv("MICROBATCH_MAX_RECORDS", "20")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@db/x")
    settings = load_settings(config)
    assert settings.max_records == 20 and settings.max_wait_ms == 900
    assert settings.kafka_bootstrap_servers == "file:9092"
    assert settings.database_url.get_secret_value() == "postgresql://u:hunter2@db/x"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)


def test_kafka_config_json_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG", '{"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}')
    config = consumer_config(load_settings(), "g")
    assert config["security.protocol"] == "SASL_SSL"
    assert config["enable.auto.commit"] == "false"
    assert config["isolation.level"] == "read_committed"
    assert config["partition.assignment.strategy"] == "cooperative-sticky"
    assert config["auto.offset.reset"] == "error", "a stored position out of range is reported, never moved"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("enable.auto.commit", "true", "enable.auto.commit=true is refused: it must be false"),
        ("enable.auto.offset.store", "true", "must be false"),
        ("partition.assignment.strategy", "range", "must be cooperative-sticky"),
        ("isolation.level", "read_uncommitted", "must be read_committed"),
        ("enable.gapless.guarantee", "true", "enable.gapless.guarantee=true is refused: it must be false"),
        ("transactional.id", "mb-1", "transactional.id is refused: the dead-letter producer sends each letter"),
        ("group.id", "other", "use the group_id setting"),
        ("auto.offset.reset", "latest", "use the auto_offset_reset setting"),
    ],
)
def test_overrides_that_break_guarantees_are_refused(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str, message: str
) -> None:
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG", f'{{"{key}": "{value}"}}')
    with pytest.raises(ConfigError, match=message):
        consumer_config(load_settings(), "g")


def test_a_full_prefetch_queue_pauses_fetching_briefly_and_the_user_may_say_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # librdkafka's default (1 s) stalled a draining consumer about once a second (consumer/kafka_config.py).
    assert int(consumer_config(load_settings(), "g")["fetch.queue.backoff.ms"]) <= 100
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG", '{"fetch.queue.backoff.ms": "250"}')
    assert consumer_config(load_settings(), "g")["fetch.queue.backoff.ms"] == "250"
    assert "fetch.queue.backoff.ms" not in producer_config(load_settings(), "dlq"), "a consumer property"


def test_consumer_properties_do_not_reach_the_producers(monkeypatch: pytest.MonkeyPatch) -> None:
    given = {"group.instance.id": "a", "queued.min.messages": "10", "fetch.wait.max.ms": "50", "linger.ms": "5"}
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG", json.dumps(given))
    config = producer_config(load_settings(), "dlq")
    assert config["linger.ms"] == "5" and not {"group.instance.id", "queued.min.messages", "fetch.wait.max.ms"} & set(
        config
    )


def test_matching_values_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MICROBATCH_KAFKA_CONFIG",
        '{"enable.auto.commit": "False", "isolation.level": "read_committed"}',
    )
    assert consumer_config(load_settings(), "g")["enable.auto.commit"] == "false"


def test_producer_is_idempotent_with_acks_all_and_no_consumer_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG", '{"isolation.level": "read_committed", "ssl.ca.location": "/ca"}')
    config = producer_config(load_settings(), "dlq")
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    assert "isolation.level" not in config and config["ssl.ca.location"] == "/ca"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MICROBATCH_MAX_RECORDS": "0"},
            "max_records (env MICROBATCH_MAX_RECORDS) = '0': Input should be greater than",
        ),
        ({"MICROBATCH_MAX_WAIT_MS": "soon"}, "max_wait_ms"),
        ({"MICROBATCH_AUTO_OFFSET_RESET": "middle"}, "auto_offset_reset"),
        ({"MICROBATCH_MAX_RECORD": "10"}, "MICROBATCH_MAX_RECORD: unknown setting"),
        ({"MICROBATCH_KAFKA_CONFIG": "not json"}, "kafka_config"),
    ],
)
def test_mistakes_name_the_setting(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert message in str(caught.value)


def test_settings_that_contradict_each_other_are_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROBATCH_IDLE_IN_TRANSACTION_TIMEOUT_MS", "10000")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "idle_in_transaction_timeout_ms (10000) must exceed dead_letter_timeout_s (30 s)" in str(caught.value)
    monkeypatch.setenv("MICROBATCH_DEAD_LETTER_TIMEOUT_S", "5")
    assert load_settings().idle_in_transaction_timeout_ms == 10000
    monkeypatch.setenv("MICROBATCH_IDLE_IN_TRANSACTION_TIMEOUT_MS", "0")  # 0: no timeout, nothing to contradict
    assert load_settings().idle_in_transaction_timeout_ms == 0
    with pytest.raises(ConfigError, match=r"retry_initial_ms \(5000\) must not exceed retry_max_ms \(1000\)"):
        load_settings(retry_initial_ms=5000, retry_max_ms=1000)


@pytest.mark.parametrize("other", [{"auto_offset_reset": "latest"}, {"adopt_kafka_offsets": True}])
def test_durability_replay_refuses_a_start_that_would_skip_lost_commits(other: dict[str, Any]) -> None:
    assert load_settings(durability="replay").durability == "replay"
    assert load_settings(**other).durability == "fsync"  # each alone is fine
    with pytest.raises(ConfigError, match="durability = replay needs auto_offset_reset = earliest"):
        load_settings(durability="replay", **other)


def test_config_file_mistakes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("max_records = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("max_recordz = 5\n")
    with pytest.raises(ConfigError, match=re.escape(f"config file {unknown}: max_recordz: unknown setting")):
        load_settings(unknown)


def test_secrets_never_appear_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@db/x")
    monkeypatch.setenv("MICROBATCH_MAX_RECORDS", "-1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)


# -- the environment: only MICROBATCH_<NAME>, KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL ----------------------


def test_bare_names_and_kubernetes_service_links_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Kubernetes injects <SERVICE>_PORT=tcp://… for every Service in the namespace ("metrics" here).
    for key, value in {"LOG_LEVEL": "debug", "PIPELINE": "pageviews", "MAX_RECORDS": "7", "max_wait_ms": "9",
                       "METRICS_PORT": "tcp://10.0.0.1:9108", "HEALTH_STALL_S": "1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert (settings.log_level, settings.pipeline, settings.max_records, settings.max_wait_ms) == (
        "INFO", "invoices", 5000, 500,
    )  # fmt: skip
    assert (settings.metrics_port, settings.health_stall_s) == (9108, 180.0)
    monkeypatch.setenv("MICROBATCH_LOG_LEVEL", "debug")
    monkeypatch.setenv("MICROBATCH_METRICS_PORT", "9200")
    assert (load_settings().log_level, load_settings().metrics_port) == ("DEBUG", 9200)


def test_service_links_of_a_service_named_microbatch_are_ignored_or_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Service named "microbatch" (or "microbatch-metrics") puts its links under our prefix."""
    links = {
        "MICROBATCH_SERVICE_HOST": "10.0.0.1", "MICROBATCH_SERVICE_PORT": "9108",
        "MICROBATCH_SERVICE_PORT_METRICS": "9108", "MICROBATCH_PORT": "tcp://10.0.0.1:9108",
        "MICROBATCH_PORT_9108_TCP": "tcp://10.0.0.1:9108", "MICROBATCH_PORT_9108_TCP_ADDR": "10.0.0.1",
        "MICROBATCH_PORT_9108_TCP_PORT": "9108", "MICROBATCH_PORT_9108_TCP_PROTO": "tcp",
    }  # fmt: skip
    for key, value in links.items():
        monkeypatch.setenv(key, value)
    assert load_settings().metrics_port == 9108
    monkeypatch.setenv("MICROBATCH_METRIC_PORT", "9200")  # a typo, not a link: reported
    with pytest.raises(ConfigError, match="MICROBATCH_METRIC_PORT: unknown setting"):
        load_settings()
    monkeypatch.delenv("MICROBATCH_METRIC_PORT")
    monkeypatch.setenv("microbatch_log_level", "debug")  # not ours: names are exact
    assert load_settings().log_level == "INFO"
    monkeypatch.setenv("MICROBATCH_METRICS_PORT", "tcp://10.0.0.2:9108")  # a Service named microbatch-metrics
    with pytest.raises(ConfigError, match=r"MICROBATCH_METRICS_PORT.*a Kubernetes service link.*enableServiceLinks"):
        load_settings()


def test_the_prefixed_name_beats_the_plain_one_and_the_environment_beats_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('database_url = "postgresql://file/x"\nkafka_bootstrap_servers = "file:9092"\n')
    monkeypatch.setenv("DATABASE_URL", "postgresql://plain/x")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "plain:9092")
    monkeypatch.setenv("MICROBATCH_KAFKA_BOOTSTRAP_SERVERS", "prefixed:9092")
    settings = load_settings(config)
    assert settings.database_url.get_secret_value() == "postgresql://plain/x"
    assert settings.kafka_bootstrap_servers == "prefixed:9092"


def test_microbatch_config_names_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named, given = tmp_path / "named.toml", tmp_path / "given.toml"
    named.write_text("max_records = 10\n")
    given.write_text("max_records = 20\n")
    monkeypatch.setenv("MICROBATCH_CONFIG", str(named))
    assert load_settings().max_records == 10
    assert load_settings(given).max_records == 20, "--config wins over MICROBATCH_CONFIG"
    monkeypatch.setenv("MICROBATCH_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match=r"missing.toml does not exist \(named by MICROBATCH_CONFIG\)"):
        load_settings()


@pytest.mark.parametrize(
    "variable",
    [f"MICROBATCH_{name}" for name in ("REQUIRE_INTEGRATION", "CHAOS", "CHAOS_REPORT_DIR", "FUZZ", "FAILPOINTS",
     "CACHE", "NO_DOCKER", "SERVICES", "KAFKA_IMAGE", "POSTGRES_IMAGE", "DEBIAN_MIRROR", "IMAGE")],
)  # fmt: skip
def test_variables_of_the_tooling_are_not_unknown_settings(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "1")  # `make test` sets MICROBATCH_REQUIRE_INTEGRATION=1, and so on
    assert load_settings().max_records == 5000


def test_config_after_the_subcommand_and_before_it(tmp_path: Path) -> None:
    assert parser().parse_args(["run", "--config", "after.toml"]).config == Path("after.toml")
    assert parser().parse_args(["--config", "before.toml", "run"]).config == Path("before.toml")
    assert parser().parse_args(["--config", "x", "dlq", "replay", "--config", "y"]).config == Path("y")
    assert parser().parse_args(["positions", "reset", "--topic", "t", "--to", "earliest", "--config", "z"]).config
    assert parser().parse_args(["status"]).config is None


def test_a_config_file_given_after_the_subcommand_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text("max_records = 0\n")
    assert main(["status", "--config", str(config)]) == 2  # refused before any connection is attempted
    assert f"config file {config}: max_records: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("microbatch ")


# -- where a mistake came from --------------------------------------------------------------------------


def test_errors_from_the_file_name_the_file_and_key_and_errors_from_the_environment_the_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('max_records = 0\nauto_offset_reset = "middle"\nmax_wait_ms = 100\n')
    monkeypatch.setenv("MICROBATCH_MAX_WAIT_MS", "soon")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    lines = str(caught.value).splitlines()
    assert f"  config file {config}: max_records: Input should be greater than or equal to 1" in lines
    assert any(line.startswith(f"  config file {config}: auto_offset_reset: Input should be") for line in lines)
    assert any(line.startswith("  max_wait_ms (env MICROBATCH_MAX_WAIT_MS) = 'soon': ") for line in lines)
    assert "MICROBATCH_MAX_RECORDS" not in str(caught.value) and "MICROBATCH_AUTO_OFFSET_RESET" not in str(caught.value)


def test_config_files_use_the_plain_setting_names(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("MICROBATCH_MAX_RECORDS = 10\n")
    with pytest.raises(ConfigError, match=re.escape(f"config file {config}: MICROBATCH_MAX_RECORDS: unknown setting")):
        load_settings(config)


# -- secrets in kafka_config ----------------------------------------------------------------------------

SECRETS = {
    "sasl.password": "s3cr3t-sasl",
    "ssl.key.password": "s3cr3t-key",
    "ssl.keystore.password": "s3cr3t-keystore",
    "sasl.oauthbearer.client.secret": "s3cr3t-oauth",
    "sasl.jaas.config": "org.apache.kafka.common.security.plain.PlainLoginModule password='s3cr3t-jaas';",
    "ssl.key.pem": "-----BEGIN PRIVATE KEY-----s3cr3t-pem",
}


def test_kafka_config_secrets_are_masked_in_repr_and_str(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG", json.dumps({**SECRETS, "sasl.username": "alice"}))
    settings = load_settings()
    for shown in (repr(settings), str(settings)):
        assert "s3cr3t" not in shown and "alice" in shown and "sasl.password" in shown
    assert consumer_config(settings, "g")["sasl.password"] == "s3cr3t-sasl", "masked only when shown"
    assert isinstance(settings, Settings) and settings.kafka_config == {**SECRETS, "sasl.username": "alice"}


def test_kafka_config_secrets_never_appear_in_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG", json.dumps({**SECRETS, "sasl.mechanism": ["s3cr3t-list"]}))
    monkeypatch.setenv("MICROBATCH_MAX_RECORDS", "0")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "kafka_config.sasl.mechanism (env MICROBATCH_KAFKA_CONFIG)" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
    config = tmp_path / "c.toml"
    config.write_text('[kafka_config]\n"sasl.password" = ["s3cr3t-file"]\n')
    monkeypatch.delenv("MICROBATCH_KAFKA_CONFIG")
    monkeypatch.delenv("MICROBATCH_MAX_RECORDS")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert f"config file {config}: kafka_config.sasl.password" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG", json.dumps({**SECRETS, "enable.auto.commit": "true"}))
    with pytest.raises(ConfigError) as caught:
        check_passthrough(load_settings().kafka_config)
    assert "enable.auto.commit" in str(caught.value) and "s3cr3t" not in str(caught.value)


def test_kafka_config_from_the_environment_is_merged_over_the_file_key_by_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The usual split: the non-secret properties in a config file, the password in an env var from a Secret.
    config = tmp_path / "c.toml"
    config.write_text('[kafka_config]\n"security.protocol" = "SASL_SSL"\n"sasl.username" = "file"\n')
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG", '{"sasl.username": "env", "sasl.password": "s3cr3t"}')
    assert load_settings(config).kafka_config == {
        "security.protocol": "SASL_SSL", "sasl.username": "env", "sasl.password": "s3cr3t",
    }  # fmt: skip
    config.write_text('[kafka_config]\n"security.protocol" = 1\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert f"config file {config}: kafka_config.security.protocol: Input should be a valid string" in str(caught.value)


# -- start-up and liveness --------------------------------------------------------------------------------


def test_startup_timeout_defaults_to_waiting_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().startup_timeout_s == 0.0
    monkeypatch.setenv("MICROBATCH_STARTUP_TIMEOUT_S", "-1")
    with pytest.raises(ConfigError, match=r"startup_timeout_s .*greater than or equal to 0"):
        load_settings()


def test_health_stall_must_outlast_the_longest_blocking_step(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings()
    longest = max(defaults.statement_timeout_ms / 1000, defaults.dead_letter_timeout_s)
    assert defaults.health_stall_s == 180.0 and defaults.health_stall_s > longest + LIVENESS_MARGIN_S
    assert LIVENESS_MARGIN_S == 30.0
    monkeypatch.setenv("MICROBATCH_HEALTH_STALL_S", "150")  # = 120 s statement_timeout_ms + 30 s: not enough
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert (
        "health_stall_s (150 s) must exceed the longer of statement_timeout_ms (120000) and dead_letter_timeout_s "
        "(30 s) plus 30 s (= 150 s)"
    ) in str(caught.value)
    monkeypatch.setenv("MICROBATCH_HEALTH_STALL_S", "150.5")
    assert load_settings().health_stall_s == 150.5
    # The dead-letter wait can be the longest step too.
    monkeypatch.setenv("MICROBATCH_IDLE_IN_TRANSACTION_TIMEOUT_MS", "0")
    monkeypatch.setenv("MICROBATCH_DEAD_LETTER_TIMEOUT_S", "125")
    with pytest.raises(ConfigError, match=r"dead_letter_timeout_s \(125 s\) plus 30 s \(= 155 s\)"):
        load_settings()


def test_a_statement_without_a_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROBATCH_STATEMENT_TIMEOUT_MS", "0")
    monkeypatch.setenv("MICROBATCH_HEALTH_STALL_S", "100000")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert (
        "statement_timeout_ms = 0 (no bound) is refused: a statement without a bound could outlast health_stall_s "
        "(100000 s) and get a healthy consumer killed by its liveness probe"
    ) in str(caught.value)
