"""The README's generated reference matches the code: every setting and every metric is listed."""

from __future__ import annotations

from pathlib import Path

from consumer.docs import render
from consumer.metrics import Metrics
from consumer.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


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
