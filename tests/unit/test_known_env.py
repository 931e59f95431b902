"""The dev stack's and the compose stack's own variables share our prefix without being settings."""

from __future__ import annotations

import os

import pytest

from consumer.settings import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MICROBATCH_") or key in {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"}:
            monkeypatch.delenv(key)


def test_the_compose_walkthrough_environment_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    # README's compose walkthrough exports MICROBATCH_IMAGE, then runs `microbatch status` in the same shell.
    monkeypatch.setenv("MICROBATCH_IMAGE", "localhost/microbatch:0.1.0")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:29092")
    monkeypatch.setenv("DATABASE_URL", "postgresql://microbatch:microbatch@127.0.0.1:5433/microbatch")
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:29092"
    assert settings.max_records == 5000


def test_a_near_miss_of_a_known_variable_is_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROBATCH_IMAGES", "localhost/microbatch:0.1.0")
    with pytest.raises(ConfigError, match="MICROBATCH_IMAGES: unknown setting"):
        load_settings()
