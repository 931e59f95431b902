"""What every unit test gets."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Tests that call `consumer.cli.main` configure the root logger for the whole process
    (consumer.logs.setup_logging; check-config sets ERROR): put it back, or a later test's caplog
    would see no warning."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    yield
    root.setLevel(level)
    root.handlers[:] = handlers
