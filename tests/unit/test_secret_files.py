"""Credentials from files (a mounted Kubernetes Secret): read, merged, and every mistake a clear line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from consumer.cli import main
from consumer.settings import ConfigError, load_settings

PASSWORD = "file-secret-Xq7"  # noqa: S105 - a recognisable test value


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MICROBATCH_") or key in {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"}:
            monkeypatch.delenv(key)


def test_database_url_from_a_file_ignores_the_trailing_newline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "url"
    secret.write_text(f"postgresql://app:{PASSWORD}@db/x\n")
    monkeypatch.setenv("MICROBATCH_DATABASE_URL_FILE", str(secret))
    settings = load_settings()
    assert settings.database_url.get_secret_value() == f"postgresql://app:{PASSWORD}@db/x"
    assert PASSWORD not in repr(settings)


def test_kafka_config_from_a_file_is_merged_over_the_environment_and_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[kafka_config]\n"client.rack" = "a"\n"sasl.username" = "from-file-config"\n')
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG", json.dumps({"security.protocol": "SASL_SSL", "sasl.username": "env"}))
    secret = tmp_path / "kafka.json"
    secret.write_text(json.dumps({"sasl.username": "app", "sasl.password": PASSWORD}))
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG_FILE", str(secret))
    settings = load_settings(config)
    assert settings.kafka_config == {
        "client.rack": "a", "security.protocol": "SASL_SSL", "sasl.username": "app", "sasl.password": PASSWORD,
    }  # fmt: skip
    assert PASSWORD not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "content", "reason"),
    [
        ("MICROBATCH_DATABASE_URL_FILE", None, "does not exist"),
        ("MICROBATCH_DATABASE_URL_FILE", " \n", "is empty"),
        ("MICROBATCH_KAFKA_CONFIG_FILE", "", "is empty"),
        ("MICROBATCH_KAFKA_CONFIG_FILE", f'{{"sasl.password": "{PASSWORD}"', "not valid JSON"),
        ("MICROBATCH_KAFKA_CONFIG_FILE", f'["{PASSWORD}"]', "JSON object of strings"),
        ("MICROBATCH_KAFKA_CONFIG_FILE", f'{{"sasl.password": "{PASSWORD}", "n": 1}}', "JSON object of strings"),
    ],
)
def test_a_bad_secret_file_is_one_clear_line_naming_variable_and_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, content: str | None, reason: str
) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv(variable, str(path))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert variable in message and str(path) in message and reason in message, message
    assert PASSWORD not in message


def test_an_unreadable_secret_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A symlink loop: unreadable even for root, which a file's mode would not make it.
    path = tmp_path / "secret"
    path.symlink_to(tmp_path / "other")
    (tmp_path / "other").symlink_to(path)
    monkeypatch.setenv("MICROBATCH_DATABASE_URL_FILE", str(path))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings()


def test_a_directory_is_not_a_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROBATCH_DATABASE_URL_FILE", str(tmp_path))
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings()


@pytest.mark.parametrize("variable", ["DATABASE_URL", "MICROBATCH_DATABASE_URL"])
def test_the_url_from_both_a_variable_and_a_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    path = tmp_path / "url"
    path.write_text("postgresql://a")
    monkeypatch.setenv(variable, "postgresql://b")
    monkeypatch.setenv("MICROBATCH_DATABASE_URL_FILE", str(path))
    with pytest.raises(ConfigError, match=f"both {variable} and MICROBATCH_DATABASE_URL_FILE"):
        load_settings()


def test_the_command_line_reports_a_missing_secret_file_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG_FILE", str(tmp_path / "absent.json"))
    assert main(["check-config"]) == 2
    printed = capsys.readouterr()
    assert "MICROBATCH_KAFKA_CONFIG_FILE" in printed.out and "does not exist" in printed.out
    assert "Traceback" not in printed.out + printed.err


def test_a_url_file_wins_over_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('database_url = "postgresql://from-config/x"\n')
    path = tmp_path / "url"
    path.write_text(f"postgresql://app:{PASSWORD}@from-file/x")
    monkeypatch.setenv("MICROBATCH_DATABASE_URL_FILE", str(path))
    assert load_settings(config).database_url.get_secret_value() == f"postgresql://app:{PASSWORD}@from-file/x"


def test_a_file_that_never_ends_or_nests_too_deeply_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICROBATCH_DATABASE_URL_FILE", "/dev/zero")
    with pytest.raises(ConfigError, match=r"MICROBATCH_DATABASE_URL_FILE: the file /dev/zero is larger than"):
        load_settings()
    monkeypatch.delenv("MICROBATCH_DATABASE_URL_FILE")
    nested = tmp_path / "kafka.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)  # deeper than any Python's json recurses (3.13: 5,000 is fine)
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG_FILE", str(nested))
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_settings()


def test_a_large_binary_file_is_refused_for_its_size_not_its_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "image.bin"
    big.write_bytes(b"\xff" * (2 * 1024 * 1024))
    monkeypatch.setenv("MICROBATCH_DATABASE_URL_FILE", str(big))
    with pytest.raises(ConfigError, match="is larger than 1,048,576 bytes"):
        load_settings()
