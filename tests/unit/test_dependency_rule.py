"""The one dependency rule (ARCHITECTURE.md §1), enforced by walking the import statements."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "pipeline": ("consumer", "confluent_kafka"),
    "consumer": ("psycopg", "psycopg_binary", "psycopg_pool"),
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_never_imports_forbidden_modules(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in files
        for module in imported_modules(path)
        if module.split(".")[0] in FORBIDDEN[package]
    ]
    assert offenders == []


def test_the_walk_finds_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import psycopg.sql\nfrom confluent_kafka import Consumer\nfrom . import local\n")
    assert imported_modules(sample) == {"psycopg.sql", "confluent_kafka"}
