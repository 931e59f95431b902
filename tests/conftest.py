"""Session-wide test plumbing: services are started lazily by tests/integration/conftest.py.

With MICROBATCH_REQUIRE_INTEGRATION=1 (set by `make test`), a run in which no integration test
passed fails: a green run must prove that real Kafka and PostgreSQL were exercised.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.support.services import SERVICE_LOG

pytest_plugins = ["tests.support.fixtures"]
_passed_integration = 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under integration/ and chaos/ talk to real servers; chaos/ are fault-injection scenarios."""
    for item in items:
        path = str(item.path)
        if "/tests/integration/" in path or "/tests/chaos/" in path:
            item.add_marker(pytest.mark.integration)
        if "/tests/chaos/" in path:
            item.add_marker(pytest.mark.chaos)
        if "/tests/bench/" in path:
            item.add_marker(pytest.mark.integration)


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (CI timeout, a killed make) becomes KeyboardInterrupt so session fixtures still stop
    # the Kafka and PostgreSQL processes they started.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _passed_integration  # noqa: PLW0603 - a counter shared by two hooks of one session
    if report.when == "call" and report.passed and "integration" in report.keywords:
        _passed_integration += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    required = os.environ.get("MICROBATCH_REQUIRE_INTEGRATION") == "1"
    if required and exitstatus == 0 and _passed_integration == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SERVICE_LOG:
        terminalreporter.section("services used")
        for line in SERVICE_LOG:
            terminalreporter.write_line(line)
    if os.environ.get("MICROBATCH_REQUIRE_INTEGRATION") == "1" and _passed_integration == 0:
        terminalreporter.write_line("FAILED: no integration test passed against real Kafka and PostgreSQL", red=True)
    else:
        terminalreporter.write_line(f"integration tests passed against real services: {_passed_integration}")
