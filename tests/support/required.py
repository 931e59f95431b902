"""A pytest plugin: with MICROBATCH_REQUIRE_INTEGRATION=1 (`make test`), the tests that talk to real
servers may not skip, except those on an explicit allow-list, whose reasons are printed.

A green required run must prove that real Kafka and PostgreSQL were exercised: at least one
integration test passed, and no integration, chaos or bench test skipped without being allowed to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

REQUIRED_ENV = "MICROBATCH_REQUIRE_INTEGRATION"
SERVER_MARKERS = ("integration", "chaos", "bench")

# node id → why it may skip. Every entry is a capability the machine may genuinely lack.
ALLOWED_SKIPS: dict[str, str] = {}
# node id prefix → why its tests may skip; the skip's own reason is printed beside it.
ALLOWED_PREFIXES: dict[str, str] = {
    "tests/containers/": "needs podman, as root (make tools installs it where it can)",
}


def allowed(node: str) -> str | None:
    """Why `node` (without parameters) may skip, or None when it may not."""
    return ALLOWED_SKIPS.get(node) or next((why for p, why in ALLOWED_PREFIXES.items() if node.startswith(p)), None)


@dataclass
class _Tally:
    passed: int = 0
    allowed: list[tuple[str, str]] = field(default_factory=list)  # (node id, allow-list reason)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (node id, skip reason)


_tally = _Tally()


def required() -> bool:
    return os.environ.get(REQUIRED_ENV) == "1"


def _talks_to_servers(report: pytest.TestReport) -> bool:
    return any(marker in report.keywords for marker in SERVER_MARKERS)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_configure(config: pytest.Config) -> None:
    global _tally  # noqa: PLW0603 - one tally per session; the logreport hook is given no config
    _tally = _Tally()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not _talks_to_servers(report):
        return
    tally = _tally
    if report.when == "call" and report.passed:
        tally.passed += 1
    elif report.skipped:
        why = allowed(report.nodeid.split("[", 1)[0])
        if why is not None:
            tally.allowed.append((report.nodeid, f"{why}; here: {_skip_reason(report)}"))
        else:
            tally.refused.append((report.nodeid, _skip_reason(report)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    tally = _tally
    if required() and exitstatus == 0 and (tally.passed == 0 or tally.refused):
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    tally = _tally
    terminalreporter.section("tests against real servers")
    terminalreporter.write_line(f"integration tests passed against real services: {tally.passed}")
    terminalreporter.write_line(
        f"skip allow-list ({len(ALLOWED_SKIPS) + len(ALLOWED_PREFIXES)} entr"
        f"{'y' if len(ALLOWED_SKIPS) + len(ALLOWED_PREFIXES) == 1 else 'ies'}); skipped here: "
        f"{len(tally.allowed)}"
    )
    for node, reason in tally.allowed:
        terminalreporter.write_line(f"  allowed skip: {node}: {reason}")
    if not required():
        return
    if tally.passed == 0:
        terminalreporter.write_line("FAILED: no integration test passed against real Kafka and PostgreSQL", red=True)
    for node, reason in tally.refused:
        terminalreporter.write_line(f"FAILED: {node} skipped ({reason}) and is not on the allow-list", red=True)
