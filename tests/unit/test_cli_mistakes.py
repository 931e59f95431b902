"""More user mistakes found by probing the command line, refused in one clear line (exit 2) before any
service is touched: a pace that is no pace, a timestamp without its UTC offset or before the epoch, an
offset where the log's bounds are unknown, `--grant-to public`, a file that never ends, JSON nested too
deeply."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumer.cli import main, parser
from consumer.position_reset import ResetError, check_offset, parse_target
from consumer.settings import ConfigError, load_settings
from pipeline import toml_file
from pipeline.spec_loader import PipelineFileError, load_pipeline

# Nothing listens on port 1: a test that reached for a service would fail at once, never touch one.
NOWHERE = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MICROBATCH_") or key in {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"}:
            monkeypatch.delenv(key)
    for key, value in NOWHERE.items():
        monkeypatch.setenv(key, value)


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What argparse printed when it refused `argv` (exit 2)."""
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("rate", ["-5", "-0.1", "nan", "inf", "-inf"])
def test_produce_refuses_a_rate_that_is_no_pace(rate: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(["produce", "--count", "1", f"--rate={rate}"], capsys)
    assert "argument --rate: must be a number of messages per second (0: no limit)" in err, err


@pytest.mark.parametrize(("rate", "taken"), [("0.5", 0.5), ("0", 0.0)])  # 0: no limit (compose's PRODUCE_RATE=0)
def test_produce_takes_a_fractional_rate_and_zero(rate: str, taken: float) -> None:
    assert parser().parse_args(["produce", "--count", "1", "--rate", rate]).rate == taken


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_dlq_replay_refuses_a_timestamp_without_its_utc_offset_as_positions_reset_does(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refused(["dlq", "replay", option, "2026-01-31T12:00:00"], capsys)
    with pytest.raises(ValueError, match="needs a UTC offset") as reset:
        parse_target("2026-01-31T12:00:00")
    assert f"argument {option}: {reset.value}" in err, err


def test_dlq_replay_takes_a_timestamp_with_its_offset() -> None:
    args = parser().parse_args(
        ["dlq", "replay", "--since", "2026-01-31T12:00:00Z", "--until", "2026-01-31T13:00+01:00"]
    )
    assert args.since == datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert args.until == args.since


@pytest.mark.parametrize("moment", ["1969-12-31T23:59:59.999Z", "0001-01-01T00:00:00Z", "1970-01-01T00:30:00+01:00"])
def test_positions_reset_refuses_a_time_before_the_epoch_kafka_would_read_as_latest_or_earliest(
    moment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=r"before 1970-01-01T00:00:00Z .*: use earliest"):
        parse_target(moment)
    assert main(["positions", "reset", "--topic", "t", "--to", moment]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"microbatch: error: --to {moment!r}: use earliest"), err
    assert "before 1970-01-01T00:00:00Z" in err, err


def test_positions_reset_takes_the_epoch_itself() -> None:
    assert parse_target("1970-01-01T00:00:00Z") == datetime(1970, 1, 1, tzinfo=UTC)


def test_an_offset_is_refused_where_the_log_bounds_are_unknown_or_do_not_hold_it() -> None:
    for low, high in ((None, None), (0, None), (None, 10)):
        with pytest.raises(ResetError, match=r"^cannot read the offsets of t\[2\] from Kafka$"):
            check_offset(("t", 2), 5, low, high)
    for offset in (4, 11, 9223372036854775807, int("1" * 30)):
        with pytest.raises(ResetError, match=rf"^offset {offset} is outside the log of t\[2\] \(5\.\.10, 10 being"):
            check_offset(("t", 2), offset, 5, 10)
    for offset in (5, 7, 10):  # the end itself is a position: nothing left to read
        check_offset(("t", 2), offset, 5, 10)


def test_init_db_refuses_to_grant_to_public_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init-db", "--grant-to", "public"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("microbatch: error: --grant-to public: "), err
    assert "PUBLIC, every role" in err and "127.0.0.1:1" not in err, err


def test_a_role_named_public_in_capitals_is_a_role_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    # Quoted through sql.Identifier, "PUBLIC" names a role, not PUBLIC: not refused (the database is then
    # out of reach here).
    assert main(["init-db", "--grant-to", "PUBLIC"]) == 2
    err = capsys.readouterr().err
    assert "--grant-to" not in err and "127.0.0.1:1" in err, err


@pytest.mark.parametrize("option", ["--config", "--pipeline"])
def test_check_config_refuses_an_endless_file(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", option, "/dev/zero"]) == 2
    out = capsys.readouterr().out
    assert f"file /dev/zero is larger than {toml_file.MAX_BYTES:,} bytes: not a pipeline or settings file" in out, out


def test_a_file_just_over_the_limit_is_refused_and_one_at_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(toml_file, "MAX_BYTES", 1024)
    at_limit, over = tmp_path / "at.toml", tmp_path / "over.toml"
    at_limit.write_text("#" * 1023 + "\n")
    over.write_text("#" * 1024 + "\n")
    assert toml_file.read_toml(at_limit) == {}
    with pytest.raises(PipelineFileError, match=r"over\.toml is larger than 1,024 bytes"):
        load_pipeline(over)
    with pytest.raises(ConfigError, match=r"over\.toml is larger than 1,024 bytes"):
        load_settings(over)


def test_line_ends_are_read_as_path_read_text_read_them(tmp_path: Path) -> None:
    path = tmp_path / "lines.toml"
    path.write_bytes(b"a = 1\r\nb = 2\rc = 3\n")
    assert toml_file.read_toml(path) == {"a": 1, "b": 2, "c": 3}


def test_kafka_config_nested_too_deeply_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROBATCH_KAFKA_CONFIG", "[" * 100_000 + "]" * 100_000)  # (3.13 parses 5,000 levels)
    with pytest.raises(ConfigError, match=r"kafka_config \(env MICROBATCH_KAFKA_CONFIG\): not valid JSON for this "
                                          r"setting \(nested too deeply\)"):  # fmt: skip
        load_settings()
