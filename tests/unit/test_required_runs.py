"""A required run (`make test`) fails when a test against real servers skips, unless allow-listed."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INI = """
[pytest]
markers =
    integration: real servers
    chaos: faults
    bench: benchmarks
"""
ALLOWED = "tests/containers/test_backend.py"


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> pytest.RunResult:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("MICROBATCH_REQUIRE_INTEGRATION", "1")
    pytester.makeini(INI)
    for name, text in files.items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pytester.runpytest_subprocess(
        "-p", "tests.support.required", "--import-mode=importlib", "-p", "no:cacheprovider"
    )


PASSING = "import pytest\n\n@pytest.mark.integration\ndef test_real():\n    assert 1 + 1 == 2\n"


def test_one_pass_does_not_hide_a_skipped_integration_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    skipping = "import pytest\n\n@pytest.mark.chaos\ndef test_scenario():\n    pytest.skip('no broker of its own')\n"
    result = _run(pytester, monkeypatch, {"test_a.py": PASSING, "test_b.py": skipping})
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*FAILED: test_b.py::test_scenario skipped (no broker of its own)*allow-list*"])


def test_an_allow_listed_skip_passes_and_prints_its_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    skipping = (
        "import pytest\n\n@pytest.mark.integration\n"
        "def test_kafka_and_postgres_in_containers():\n    pytest.skip('podman is not installed')\n"
    )
    result = _run(pytester, monkeypatch, {"test_a.py": PASSING, ALLOWED: skipping})
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([f"*allowed skip: {ALLOWED}::test_kafka_and*needs podman*here: podman is*"])


def test_a_run_without_any_integration_pass_fails(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    unit = "def test_pure():\n    assert True\n"
    result = _run(pytester, monkeypatch, {"test_a.py": unit})
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*FAILED: no integration test passed*"])
