"""Observability against real servers: a real Prometheus scrapes a consumer under load and evaluates
every dashboard and alert expression; both lag gauges keep rising while PostgreSQL is down; the compose
file is validated by a real Compose implementation."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin import AdminClient

from consumer.produce import ensure_topic
from consumer.workload import InvoiceWorkload, WorkloadOptions
from devstack.postgres_server import PostgresServer
from devstack.prometheus_server import PrometheusServer, start_prometheus
from devstack.verify import high_watermarks, stored_positions
from tests.support.consumer_process import MICROBATCH, ConsumerProcess, run_cli
from tests.support.kafka_io import metrics_port, port_of, produce_exact, sample, scrape
from tests.support.services import KafkaService, wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "microbatch.json"
ALERTS = ROOT / "grafana" / "alerts.yml"
COMPARISON = re.compile(r"(?<![=!<>])(==|!=|>=|<=|>|<)(?!=)\s*")
# What Grafana puts in for the dashboard's variables: the job Prometheus scrapes, every pipeline and instance.
VARIABLES = {"$job": "microbatch", "$pipeline": ".*", "$instance": ".*"}


def with_variables(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [with_variables(target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def variable_queries() -> list[str]:
    """The dashboard's label_values() variables as PromQL: each must find at least one value."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
            assert found, variable["definition"]
            queries.append(f"count by ({found.group(2)}) ({with_variables(found.group(1))})")
    return queries


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
        empty = [expr for expr in variable_queries() if not query(server, expr)]
        assert empty == [], f"dashboard variables without values: {empty}"
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
        if server.process is not None:  # reap it: terminate() can return on the zombie before polling it
            server.process.wait(timeout=30)
    exposed = {re.sub(r"\{.*", "", name) for name in scrape(port)}
    used = {name for expr in dashboard_expressions() + [e for _, e in alert_expressions()]
            for name in re.findall(r"\b(?:microbatch|process)_[a-z_]+", expr)}  # fmt: skip
    missing = sorted(name for name in used if name not in exposed)
    assert missing == [], f"expressions use metrics the consumer does not expose: {missing}"
    assert consumer.terminate() == 0


def lag_figures(port: int) -> tuple[float, float, int]:
    """(messages, oldest unwritten message's age in seconds, partitions reported) over all partitions."""
    samples = scrape(port)
    messages = [v for k, v in samples.items() if k.startswith("microbatch_consumer_lag{")]
    ages = [v for k, v in samples.items() if k.startswith("microbatch_lag_seconds{")]
    return sum(messages), max(ages, default=math.nan), len(ages)


def test_both_lag_gauges_keep_rising_while_postgresql_is_down(
    kafka: KafkaService, own_postgres: PostgresServer, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str,
) -> None:  # fmt: skip
    """Paused partitions are not fetched, so librdkafka's cached high watermarks freeze: the consumer
    must ask the leaders, and the age of the oldest unwritten message must go on growing."""
    env = {**service_env, "DATABASE_URL": own_postgres.url}
    topic, group = f"invoices-{unique}", f"group-{unique}"
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, 2)
    workload = InvoiceWorkload(WorkloadOptions(count=2000, seed=17, items=20))
    events: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = [
        (m.key, m.value, None) for m in workload.messages()
    ]
    produce_exact(kafka.bootstrap, topic, events[:1000])
    consumer = consumer_factory(env, invoice_pipeline)
    port = port_of(consumer)

    def caught_up() -> bool:
        return stored_positions(own_postgres.url, group) == high_watermarks(kafka.bootstrap, topic, 2)

    wait_until(caught_up, timeout=120, what="the consumer to catch up")
    wait_until(lambda: lag_figures(port) == (0, 0, 2), timeout=30, what="both lag gauges at 0 for 2 partitions")

    own_postgres.stop("fast")
    produce_exact(kafka.bootstrap, topic, events[1000:1500])
    wait_until(lambda: sample(port, "microbatch_paused") == 1, timeout=60, what="the consumer to pause")
    wait_until(lambda: lag_figures(port)[0] == 500, timeout=30, what="the lag to count the unwritten 500")
    _, age, _ = lag_figures(port)
    produced_more = time.monotonic()
    produce_exact(kafka.bootstrap, topic, events[1500:])  # into paused partitions: nothing is fetched
    wait_until(lambda: lag_figures(port)[0] == 1000, timeout=30, what="the message lag to count what came since")
    wait_until(lambda: lag_figures(port)[1] >= age + 4, timeout=30, what="the age of the oldest to grow")
    assert sample(port, "microbatch_paused") == 1, "still paused: the lag moved without a fetch"
    _, later, _ = lag_figures(port)
    assert later >= age + (time.monotonic() - produced_more) - 3, (age, later)

    own_postgres.start()
    wait_until(caught_up, timeout=120, what="the consumer to catch up after the outage")
    wait_until(lambda: lag_figures(port) == (0, 0, 2), timeout=30, what="both lag gauges back at 0")
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
