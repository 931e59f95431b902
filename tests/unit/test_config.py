"""Settings from env and file, refused Kafka overrides, and clear messages for mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.kafka_config import consumer_config, producer_config
from consumer.settings import ConfigError, load_settings


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


def test_config_file_mistakes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("max_records = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("max_recordz = 5\n")
    with pytest.raises(ConfigError, match=r"max_recordz .*unknown setting"):
        load_settings(unknown)


def test_secrets_never_appear_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@db/x")
    monkeypatch.setenv("MICROBATCH_MAX_RECORDS", "-1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)
