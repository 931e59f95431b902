"""grafana/alerts.yml: promtool's own rule tests (grafana/alerts_test.yml: MicrobatchDown for a stopped,
a crash-looping and a vanished consumer, MicrobatchNoFlush per instance, the topic-missing and lag
alerts), and every alert linked to its own section of the runbook."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from devstack.kubernetes import ALERTS, DEFAULT_RUNBOOK_BASE, alert_rules, alerts_problems, runbook_url
from tests.support.required import required

ROOT = Path(__file__).resolve().parents[2]
RULE_TESTS = ROOT / "grafana" / "alerts_test.yml"
RUNBOOK = ROOT / "docs/OPERATIONS.md"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (run `make tools`, which installs Prometheus)"
        if required():
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    binary = promtool()
    checked = subprocess.run([binary, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([binary, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                            check=False, cwd=RULE_TESTS.parent, timeout=120)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_rule_tests_cover_the_alerts_that_matter() -> None:
    text = RULE_TESTS.read_text()
    tested = set(re.findall(r"alertname: (\w+)", text))
    assert {"MicrobatchDown", "MicrobatchNoFlush", "MicrobatchTopicMissing", "MicrobatchLagHigh"} <= tested
    assert 'instance="crashloop:9108"' in text and "stale" in text, "crash-looping and vanished consumers"


def test_every_alert_links_its_own_runbook_section() -> None:
    assert alerts_problems(ALERTS.read_text()) == []
    rules = alert_rules(ALERTS.read_text())
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        assert url == runbook_url(DEFAULT_RUNBOOK_BASE, rule["alert"]) and url.startswith("https://")
    headings = set(re.findall(r"^## (\S+)\s*$", RUNBOOK.read_text(), flags=re.MULTILINE))
    missing = [rule["alert"] for rule in rules if rule["alert"] not in headings]
    assert missing == [], f"docs/OPERATIONS.md needs a section headed by each alert's name: {missing}"


def test_the_alerts_the_issue_asked_for_exist() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules(ALERTS.read_text())}
    assert {"MicrobatchDown", "MicrobatchTopicMissing", "MicrobatchLagHigh"} <= set(rules)
    assert rules["MicrobatchTopicMissing"]["for"] == "10m"
    assert "microbatch_topic_missing" in rules["MicrobatchTopicMissing"]["expr"]
    assert "microbatch_lag_seconds" in rules["MicrobatchLagHigh"]["expr"]
    assert "by (instance)" in rules["MicrobatchNoFlush"]["expr"], "one stuck replica must not hide behind another"
