"""The docs match the code and the repository: the README's generated reference lists every setting
and metric, every relative link resolves, and every cited *.md file exists here."""

from __future__ import annotations

import re
from pathlib import Path

from consumer.docs import render
from consumer.metrics import Metrics
from consumer.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def test_readme_reference_is_up_to_date() -> None:
    text = README.read_text()
    assert render(text) == text, "README.md is out of date: run `make docs`"


def test_every_setting_and_env_var_appears_in_the_readme() -> None:
    text = README.read_text()
    missing = [name for name in Settings.model_fields if f"`MICROBATCH_{name.upper()}`" not in text]
    assert missing == []


def test_every_metric_appears_in_the_readme() -> None:
    text = README.read_text()
    names = {m.name for m in Metrics(process_metrics=False).registry.collect()}
    missing = [name for name in names if name not in text]
    assert missing == []


DOC_FILES = ("README.md", "BENCHMARKS.md", "chaos-report.md", "docs")
LINK = re.compile(r"\]\(([^)\s]+)\)")
CITED = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b")
SOURCES = ("consumer", "pipeline", "devstack", "bench", "tests", "docs", "grafana", "deploy")


def _documents() -> list[Path]:
    found: list[Path] = []
    for name in DOC_FILES:
        path = ROOT / name
        found += sorted(path.rglob("*.md")) if path.is_dir() else [path]
    return found


def test_every_relative_link_in_the_docs_resolves() -> None:
    broken = []
    for document in _documents():
        for target in LINK.findall(document.read_text()):
            if "://" in target or target.startswith(("#", "mailto:")):
                continue
            if not (document.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{document.relative_to(ROOT)} → {target}")
    assert broken == []


def test_every_cited_markdown_file_exists_in_the_repository() -> None:
    files = [*_documents(), ROOT / "pyproject.toml", ROOT / "Makefile"]
    for directory in SOURCES:
        if (ROOT / directory).is_dir():
            files += [p for p in (ROOT / directory).rglob("*") if p.suffix in {".py", ".md", ".yml", ".toml"}]
    missing = sorted(
        {
            f"{path.relative_to(ROOT)} cites {cited}"
            for path in files
            for cited in CITED.findall(path.read_text(errors="replace"))
            if not (ROOT / cited).exists() and not (path.parent / cited).exists()
        }
    )
    assert missing == []
