"""Which server a test session uses: explicit env → Testcontainers → local processes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from devstack.engine import configure
from devstack.preflight import missing_tools
from devstack.sources import Source, choose_source


def _never() -> bool:
    raise AssertionError("the Docker probe must not run when the environment decides")


def test_explicit_environment_wins_without_probing_docker() -> None:
    assert choose_source({"DATABASE_URL": "postgresql://x"}, "DATABASE_URL", _never) is Source.ENVIRONMENT


@pytest.mark.parametrize("value", ["", "   "])
def test_blank_environment_does_not_count(value: str) -> None:
    assert choose_source({"DATABASE_URL": value}, "DATABASE_URL", lambda: True) is Source.TESTCONTAINERS


def test_testcontainers_when_a_daemon_answers() -> None:
    assert choose_source({}, "KAFKA_BOOTSTRAP_SERVERS", lambda: True) is Source.TESTCONTAINERS


def test_local_processes_when_no_daemon_answers() -> None:
    assert choose_source({}, "KAFKA_BOOTSTRAP_SERVERS", lambda: False) is Source.LOCAL


def test_docker_can_be_switched_off() -> None:
    assert choose_source({"MICROBATCH_NO_DOCKER": "1"}, "KAFKA_BOOTSTRAP_SERVERS", _never) is Source.LOCAL


@pytest.mark.parametrize(("forced", "source"), [("containers", Source.TESTCONTAINERS), ("local", Source.LOCAL)])
def test_the_container_pass_forces_its_backend_without_probing(forced: str, source: Source) -> None:
    assert choose_source({"MICROBATCH_SERVICES": forced}, "DATABASE_URL", _never) is source


def test_podman_is_told_to_leave_rlimits_alone_once(tmp_path: Path) -> None:
    absent = tmp_path / "absent" / "containers.conf"
    assert configure(absent) is True
    assert tomllib.loads(absent.read_text())["containers"]["default_ulimits"] == []
    kept = tmp_path / "containers.conf"
    kept.write_text('[engine]\ncgroup_manager = "cgroupfs"\n\n[containers]\nlog_driver = "k8s-file"\n')
    assert configure(kept) is True
    assert configure(kept) is False  # idempotent
    conf = tomllib.loads(kept.read_text())
    assert conf["engine"] == {"cgroup_manager": "cgroupfs"}
    assert conf["containers"] == {"log_driver": "k8s-file", "default_ulimits": []}
    spaced = tmp_path / "spaced.conf"
    spaced.write_text('[ containers ]  # ours\nlog_driver = "k8s-file"\n')
    assert configure(spaced) is True
    assert tomllib.loads(spaced.read_text())["containers"]["default_ulimits"] == []  # one table, still TOML


def test_preflight_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    problems = missing_tools({"PATH": "", "PG_BINDIR": "/nonexistent"})
    assert len(problems) == 3
    assert any("Java" in p and "apt-get install" in p for p in problems)
    assert any("Maven" in p for p in problems)
    assert any("PostgreSQL 15" in p for p in problems)


def test_preflight_needs_nothing_for_services_given_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert missing_tools({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "DATABASE_URL": "postgresql://x"}) == []
