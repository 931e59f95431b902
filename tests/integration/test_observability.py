"""Observability against real servers: a real Prometheus scrapes a consumer under load and evaluates
every dashboard and alert expression; the compose file is validated by a real Compose implementation."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.prometheus_server import PrometheusServer, start_prometheus
from tests.support.consumer_process import MICROBATCH, ConsumerProcess, run_cli
from tests.support.kafka_io import metrics_port, scrape
from tests.support.services import KafkaService, wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "microbatch.json"
ALERTS = ROOT / "grafana" / "alerts.yml"
COMPARISON = re.compile(r"(?<![=!<>])(==|!=|>=|<=|>|<)(?!=)\s*")


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def as_bool(expr: str) -> str:
    """`a > 1` filters series away when false; `a > bool 1` always returns them (0 or 1)."""
    return COMPARISON.sub(lambda m: f"{m.group(1)} bool ", expr)


def query(server: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    url = f"{server.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - local Prometheus
        body = json.loads(response.read())
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.fixture
def prometheus_dir() -> Iterator[Path]:
    if shutil.which("prometheus") is None:
        pytest.skip("Prometheus is not installed (run `make tools`); `make test` installs it")
    workdir = Path(tempfile.mkdtemp(prefix="microbatch-prometheus-", dir="/tmp"))
    yield workdir
    shutil.rmtree(workdir, ignore_errors=True)


def test_prometheus_evaluates_every_dashboard_and_alert_expression_with_data(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], prometheus_dir: Path, tmp_path: Path,
) -> None:  # fmt: skip
    env = service_env
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    assert run_cli(env, "produce", "--pipeline", str(invoice_pipeline), "--count", "1000").returncode == 0
    consumer = consumer_factory(env, invoice_pipeline)
    wait_until(lambda: metrics_port(consumer.output()) is not None, timeout=60, what="the metrics server")
    port = metrics_port(consumer.output())
    assert port is not None
    server = start_prometheus(prometheus_dir, targets=[f"127.0.0.1:{port}"], rules=[ALERTS], interval="1s")
    load = subprocess.Popen(
        [str(MICROBATCH), "produce", "--pipeline", str(invoice_pipeline), "--count", "30000", "--rate", "2000",
         "--bad-ratio", "0.01", "--duplicate-ratio", "0.01", "--seed", "8"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(
            lambda: bool(query(server, 'count_over_time(up{job="microbatch"}[1m]) >= 8')),
            timeout=90, what="eight scrapes of the consumer",
        )  # fmt: skip
        wait_until(lambda: bool(query(server, "sum(rate(microbatch_dead_letters_total[1m])) > 0")),
                   timeout=60, what="dead letters to show up in Prometheus")  # fmt: skip
        assert query(server, 'up{job="microbatch"}')[0]["value"][1] == "1"
        empty = [expr for expr in dashboard_expressions() if not query(server, expr)]
        assert empty == [], f"dashboard expressions without data: {empty}"
        empty = [name for name, expr in alert_expressions() if not query(server, as_bool(expr))]
        assert empty == [], f"alert expressions without data: {empty}"
        with urllib.request.urlopen(f"{server.url}/api/v1/rules", timeout=10) as response:  # noqa: S310
            rules = json.loads(response.read())["data"]["groups"][0]["rules"]
        assert {rule["name"] for rule in rules} == {name for name, _ in alert_expressions()}
        assert all(rule["health"] == "ok" for rule in rules), rules
    finally:
        load.kill()
        load.wait(timeout=30)
        server.stop()
    exposed = {re.sub(r"\{.*", "", name) for name in scrape(port)}
    used = {name for expr in dashboard_expressions() + [e for _, e in alert_expressions()]
            for name in re.findall(r"\b(?:microbatch|process)_[a-z_]+", expr)}  # fmt: skip
    missing = sorted(name for name in used if name not in exposed)
    assert missing == [], f"expressions use metrics the consumer does not expose: {missing}"
    assert consumer.terminate() == 0


def test_compose_file_is_valid_for_a_real_compose_implementation() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (run `make tools`); `make test` installs it")
    result = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
                              capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    services = yaml.safe_load(resolved)["services"]
    assert {"kafka", "postgres", "init-db", "producer", "consumer", "prometheus", "grafana"} <= set(services)
    for name in ("kafka", "postgres", "consumer", "prometheus", "grafana"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    assert services["consumer"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["consumer"]["depends_on"]["init-db"]["condition"] == "service_completed_successfully"
    assert services["consumer"]["deploy"]["replicas"] == 1
