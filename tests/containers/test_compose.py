"""docker-compose.yml for real: docker-compose v1 against podman's Docker API brings the stack up with the
local images and two consumer replicas; the load generator's stream is drained with exact totals,
Prometheus scrapes both replicas and evaluates every alert rule, `microbatch status` answers from the
host, and the stack is torn down (volumes included).

podman has no systemd here to run health checks, so compose's `condition: service_healthy` would wait
forever: while `up` waits, a thread runs each container's check every two seconds, as the timer would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer.generators import new_workload, workload_options
from devstack import images
from devstack.engine import run
from devstack.process import free_port
from devstack.verify import compare_totals, high_watermarks, stored_positions
from tests.support.consumer_process import run_cli
from tests.support.services import wait_until

ROOT = Path(__file__).resolve().parents[2]
COUNT, REPLICAS, PARTITIONS = 20_000, 2, 4
GRAFANA_IMAGE = os.environ.get("GRAFANA_IMAGE", "grafana/grafana:11.3.0")


def _expected(count: int, seed: int) -> dict[str, Any]:
    """The totals the compose file's producer command (same count, seed and ratios) must leave."""
    workload = new_workload(workload_options("invoices", count=count, seed=seed, bad_ratio=0.005,
                                             duplicate_ratio=0.005))  # fmt: skip
    for _ in workload.messages():
        pass
    loaded: dict[str, Any] = json.loads(workload.totals.to_json())
    return loaded


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - http://127.0.0.1 only
        return json.loads(response.read())["data"]


@pytest.fixture
def health_driver(engine: str) -> Iterator[list[str]]:
    """Run the health checks of the compose projects in the yielded list (filled by the test) every 2 s."""
    projects: list[str] = []
    stop = threading.Event()

    def drive() -> None:
        while not stop.wait(2.0):
            for project in list(projects):
                names = run("ps", "--filter", f"label=com.docker.compose.project={project}", "--format",
                            "{{.Names}}", check=False).stdout.split()  # fmt: skip
                for name in names:
                    run("healthcheck", "run", name, check=False, timeout=60)

    thread = threading.Thread(target=drive, name="health-driver", daemon=True)
    thread.start()
    yield projects
    stop.set()
    thread.join(timeout=120)


@pytest.mark.timeout(900)
def test_the_compose_stack_drains_exactly_with_two_scraped_replicas(
    engine: str, health_driver: list[str], tmp_path: Path
) -> None:
    compose = shutil.which("docker-compose")
    assert compose is not None, "docker-compose is not installed: make tools installs it"
    project = f"mbtest{uuid.uuid4().hex[:6]}"
    kafka_port, postgres_port, prometheus_port = free_port(), free_port(), free_port()
    env = {**os.environ, "DOCKER_HOST": engine, "KAFKA_IMAGE": images.KAFKA, "POSTGRES_IMAGE": images.POSTGRES,
           "PROMETHEUS_IMAGE": images.PROMETHEUS, "MICROBATCH_IMAGE": images.microbatch_image(),
           "CONSUMER_REPLICAS": str(REPLICAS), "PRODUCE_COUNT": str(COUNT), "PRODUCE_RATE": "4000",
           "KAFKA_HOST_PORT": str(kafka_port), "POSTGRES_HOST_PORT": str(postgres_port),
           "PROMETHEUS_HOST_PORT": str(prometheus_port), "COMPOSE_HTTP_TIMEOUT": "300"}  # fmt: skip
    services = ["kafka", "postgres", "init-db", "producer", "consumer", "prometheus"]
    if run("image", "exists", GRAFANA_IMAGE, check=False).returncode == 0:
        services.append("grafana")
    else:
        print(f"compose: grafana left out: its image {GRAFANA_IMAGE} is not here and no registry can be reached")
    base = [compose, "-p", project, "-f", str(ROOT / "docker-compose.yml")]
    health_driver.append(project)
    started = time.monotonic()
    try:
        up = subprocess.run([*base, "up", "-d", "--no-build", "--scale", f"consumer={REPLICAS}", *services], env=env,
                            capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
        health_driver.remove(project)  # `up` waited for the health it needed; a JVM per Kafka check costs CPU
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        url = f"postgresql://microbatch:microbatch@127.0.0.1:{postgres_port}/microbatch"
        bootstrap = f"127.0.0.1:{kafka_port}"

        def produced() -> bool:
            state = json.loads(run("inspect", f"{project}_producer_1").stdout)[0]["State"]
            assert state["Running"] or state["ExitCode"] == 0, "the load generator failed"
            return not state["Running"]

        wait_until(produced, timeout=300, what=f"the load generator to produce {COUNT} messages", interval=1.0)
        watermarks = high_watermarks(bootstrap, "invoice-lines", PARTITIONS)
        assert sum(watermarks.values()) >= COUNT
        wait_until(lambda: stored_positions(url, "microbatch-invoices") == watermarks, timeout=300,
                   what="the two replicas to drain the stream", interval=1.0)  # fmt: skip
        failed = [f"{check.name}: {check.detail}" for check in compare_totals(url, _expected(COUNT, seed=1))
                  if not check.ok]  # fmt: skip
        assert failed == []

        # Prometheus: both replicas scraped (found by DNS), every alert rule evaluated.
        prometheus = f"http://127.0.0.1:{prometheus_port}/api/v1"

        def scraped() -> bool:
            query = urllib.parse.quote('count by (instance) ({__name__=~"microbatch_.+"})')
            found = _get(f"{prometheus}/query?query={query}")
            return len(found["result"]) == REPLICAS

        wait_until(
            scraped, timeout=120, what=f"Prometheus to scrape {REPLICAS} replicas' microbatch_ series", interval=2.0
        )

        def evaluated() -> bool:
            rules = [rule for group in _get(f"{prometheus}/rules")["groups"] for rule in group["rules"]]
            return bool(rules) and all(
                r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in rules
            )

        wait_until(evaluated, timeout=120, what="Prometheus to evaluate every alert rule", interval=2.0)
        host_env = {key: value for key, value in os.environ.items() if not key.startswith("MICROBATCH_")}
        status = run_cli({**host_env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": url}, "status")
        assert status.returncode == 0, status.stderr
        assert "invoice-lines" in status.stdout
        print(
            f"compose stack ({', '.join(services)}; {REPLICAS} consumers): {COUNT} events drained and "
            f"verified, both replicas scraped, rules evaluated, in {time.monotonic() - started:.0f} s"
        )
    finally:
        if project in health_driver:
            health_driver.remove(project)
        subprocess.run([*base, "down", "-v", "-t", "60"], env=env, capture_output=True, text=True, timeout=300,
                       check=False)  # fmt: skip
    left = run("ps", "-a", "--filter", f"label=com.docker.compose.project={project}", "--format", "{{.Names}}")
    assert left.stdout.strip() == "", f"compose down left containers: {left.stdout}"
