"""What the wheel ships: the service (consumer/, pipeline/ with the built-in pipelines), not the dev tools,
and only dependencies the service imports. tests/integration/test_wheel.py builds and installs it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

import pipeline
from pipeline.spec_loader import PipelineFileError, builtin_dir, builtin_names, load_pipeline
from tests.unit.test_dependency_rule import imported_modules

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SERVICE = ("consumer", "pipeline")


def service_imports() -> set[str]:
    """Top-level names of every module imported by consumer/ and pipeline/."""
    return {
        module.split(".")[0] for package in SERVICE for path in (ROOT / package).rglob("*.py")
        for module in imported_modules(path)
    }  # fmt: skip


def test_the_built_in_pipelines_live_inside_a_shipped_package() -> None:
    assert builtin_dir() == Path(pipeline.__file__).resolve().parent / "builtin"
    assert PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == list(SERVICE)
    assert {"invoices", "pageviews"} <= set(builtin_names())
    assert load_pipeline("pageviews").name == "pageviews"


def test_an_unknown_built_in_name_lists_the_built_in_pipelines() -> None:
    with pytest.raises(PipelineFileError, match=r"'pageview' is neither a file nor a built-in pipeline \(invoices, "):
        load_pipeline("pageview")


def test_the_service_never_imports_the_dev_tools() -> None:
    assert service_imports() & {"devstack", "bench", "tests"} == set()


def test_every_declared_dependency_is_imported_by_the_service() -> None:
    declared = {re.split(r"[\[<>=~!; ]", spec, maxsplit=1)[0] for spec in PYPROJECT["project"]["dependencies"]}
    unused = {name for name in declared if name.lower().replace("-", "_") not in service_imports()}
    assert unused == set(), "declared in pyproject.toml but never imported by consumer/ or pipeline/"
