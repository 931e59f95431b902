"""Session-wide test plumbing: markers by directory, the services' fixtures, and the rule that a
required run (`make test`, MICROBATCH_REQUIRE_INTEGRATION=1) may not skip tests against real servers
(tests/support/required.py)."""

from __future__ import annotations

import signal

import pytest

from tests.support.services import SERVICE_LOG

pytest_plugins = ["tests.support.fixtures", "tests.support.required", "pytester"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under integration/, chaos/, bench/ and containers/ talk to real servers; chaos/ are fault-injection
    scenarios; containers/ run the local images."""
    for item in items:
        path = str(item.path)
        if "/tests/integration/" in path or "/tests/chaos/" in path:
            item.add_marker(pytest.mark.integration)
        if "/tests/chaos/" in path:
            item.add_marker(pytest.mark.chaos)
        if "/tests/bench/" in path:
            item.add_marker(pytest.mark.integration)
        if "/tests/containers/" in path:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.containers)


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (CI timeout, a killed make) becomes KeyboardInterrupt so session fixtures still stop
    # the Kafka and PostgreSQL processes they started.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SERVICE_LOG:
        terminalreporter.section("services used")
        for line in SERVICE_LOG:
            terminalreporter.write_line(line)
