"""/metrics, /healthz and /readyz over a real HTTP socket, and the metric names."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from consumer.health import Health, HealthServer
from consumer.metrics import Metrics
from consumer.telemetry import Telemetry
from pipeline.flush_result import FlushResult


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


@pytest.fixture
def served() -> Iterator[tuple[Telemetry, int]]:
    telemetry = Telemetry(Metrics(), Health(stall_after_s=60))
    server = HealthServer(telemetry.health, telemetry.metrics.registry, host="127.0.0.1", port=0).start()
    yield telemetry, server.port
    server.stop()


def test_readiness_follows_the_loop_state(served: tuple[Telemetry, int]) -> None:
    telemetry, port = served
    assert get(port, "/readyz") == (503, "joining the consumer group\n")
    telemetry.rebalance("assign", 4)
    telemetry.database(ok=True)
    assert get(port, "/readyz")[0] == 200
    telemetry.state(paused=True, halted='column "x" does not exist', breaker=None)
    status, body = get(port, "/readyz")
    assert status == 503 and "halted" in body
    telemetry.state(paused=False, halted=None, breaker="90% rejected")
    assert get(port, "/readyz")[1].startswith("dead-letter circuit breaker open")
    telemetry.state(paused=False, halted=None, breaker=None)
    telemetry.database(ok=False)
    assert get(port, "/readyz") == (503, "database unreachable\n")
    assert get(port, "/healthz")[0] == 200


def test_liveness_fails_when_the_loop_stalls(served: tuple[Telemetry, int]) -> None:
    telemetry, port = served
    telemetry.health.heartbeat = time.monotonic() - 61
    status, body = get(port, "/healthz")
    assert status == 503 and "has moved for" in body
    telemetry.beat()
    assert get(port, "/healthz")[0] == 200


def test_liveness_follows_the_progress_of_a_write_longer_than_the_stall_limit(served: tuple[Telemetry, int]) -> None:
    """The loop waits for a long flush (bisection, many statements): each statement's progress keeps
    the consumer alive; a write that stops moving does not."""
    telemetry, port = served
    health = telemetry.health
    health.heartbeat = time.monotonic() - 600  # the loop has been waiting for the write for 10 minutes
    health.progressed()  # ... and its latest statement just returned
    assert get(port, "/healthz") == (200, "ok\n")
    health.progress = time.monotonic() - 61
    assert get(port, "/healthz")[0] == 503


def test_readiness_at_start_up_names_what_it_waits_for(served: tuple[Telemetry, int]) -> None:
    telemetry, port = served
    telemetry.rebalance("assign", 0)
    telemetry.database(ok=True)
    telemetry.health.waiting_for = "PostgreSQL at 127.0.0.1:5432/microbatch (connection refused)"
    assert get(port, "/readyz") == (
        503, "starting: waiting for PostgreSQL at 127.0.0.1:5432/microbatch (connection refused)\n",
    )  # fmt: skip
    assert get(port, "/healthz")[0] == 200  # waiting is not a reason to be restarted
    telemetry.health.waiting_for = None
    assert get(port, "/readyz") == (200, "ok\n")


def test_a_member_is_ready_once_joined_and_names_a_missing_topic(served: tuple[Telemetry, int]) -> None:
    telemetry, port = served
    health = telemetry.health
    health.subscribed = ("orders", "refunds")
    telemetry.database(ok=True)
    health.missing_topics = ("refunds",)
    assert get(port, "/readyz") == (503, "joining the consumer group\n")  # one topic exists: the group is joined
    telemetry.rebalance("assign", 0)  # an idle member (more members than partitions) is ready too
    assert get(port, "/readyz") == (200, "ok; topic refunds does not exist\n")


def test_a_member_whose_every_topic_is_missing_is_ready_and_says_so(served: tuple[Telemetry, int]) -> None:
    """librdkafka joins no group before one subscribed topic exists: a rollout must not wait for it."""
    telemetry, port = served
    health = telemetry.health
    health.subscribed = ("orders",)
    telemetry.database(ok=True)
    assert get(port, "/readyz")[0] == 503
    health.missing_topics = ("orders",)
    assert get(port, "/readyz") == (200, "ok; waiting for topic orders to exist before joining the group\n")


def test_metrics_are_exposed_with_prefix_and_preinitialised_labels(served: tuple[Telemetry, int]) -> None:
    telemetry, port = served
    telemetry.metrics.tables(["transactions"])
    telemetry.flushed(
        "records", FlushResult(inserted=5, duplicates=1, summary_rows={"inventory": 2}), records=5, size=100,
        seconds=0.01, raw_table="transactions",
    )  # fmt: skip
    status, text = get(port, "/metrics")
    assert status == 200
    assert 'microbatch_flushes_total{outcome="ok",trigger="records"} 1.0' in text
    assert 'microbatch_flushes_total{outcome="retry",trigger="shutdown"} 0.0' in text
    assert 'microbatch_dead_letters_total{reason="db_rejected"} 0.0' in text
    assert 'microbatch_rows_written_total{table="transactions"} 5.0' in text
    assert 'microbatch_rows_written_total{table="inventory"} 2.0' in text
    assert "microbatch_flush_duration_seconds_bucket" in text
    assert "process_resident_memory_bytes" in text
    assert get(port, "/nope")[0] == 404


def test_every_metric_is_named_in_the_module() -> None:
    metrics = Metrics(process_metrics=False)
    names = {metric.name for metric in metrics.registry.collect()}
    assert all(name.startswith("microbatch_") for name in names), names
    assert len(names) >= 20


@pytest.mark.parametrize(("host", "reached_at"), [("::1", "[::1]"), ("::", "127.0.0.1"), ("::", "[::1]")])
def test_an_ipv6_address_serves_and_the_any_address_serves_ipv4_too(host: str, reached_at: str) -> None:
    """Single-stack IPv6 clusters probe the pod's IPv6 address; `::` still answers IPv4 probes."""
    telemetry = Telemetry(Metrics(), Health(stall_after_s=60))
    server = HealthServer(telemetry.health, telemetry.metrics.registry, host=host, port=0).start()
    try:
        with urllib.request.urlopen(f"http://{reached_at}:{server.port}/healthz", timeout=5) as response:
            assert (response.status, response.read()) == (200, b"ok\n")
    finally:
        server.stop()
