"""Producing exact messages and reading topics back, for tests that check what went where."""

from __future__ import annotations

import math
import re
import urllib.request
from dataclasses import dataclass

from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from tests.support.consumer_process import ConsumerProcess
from tests.support.services import wait_until


@dataclass(frozen=True)
class Sent:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def produce_exact(
    bootstrap: str,
    topic: str,
    messages: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]],
    *,
    partition_of: list[int] | None = None,
) -> list[Sent]:
    """Produce (key, value, headers) in order; returns where each landed (acknowledged)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
    landed: dict[int, Sent] = {}
    errors: list[str] = []
    for index, (key, value, headers) in enumerate(messages):

        def report(err: object, msg: object, index: int = index) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                landed[index] = Sent(msg.partition(), msg.offset(), msg.key(), msg.value())  # type: ignore[attr-defined]

        kwargs = {"partition": partition_of[index]} if partition_of is not None else {}
        producer.produce(topic, key=key, value=value, headers=headers, on_delivery=report, **kwargs)  # type: ignore[arg-type]
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors
    return [landed[i] for i in range(len(messages))]


def metrics_port(log_text: str) -> int | None:
    found = re.search(r"serving /metrics, /healthz and /readyz on port (\d+)", log_text)
    return int(found.group(1)) if found else None


def scrape(port: int) -> dict[str, float]:
    """Current samples of a consumer's /metrics as {'name{label="v"}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def probe(port: int, path: str) -> int:
    """HTTP status of /healthz or /readyz."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def port_of(consumer: ConsumerProcess) -> int:
    """The consumer's metrics port, once it serves."""
    wait_until(lambda: metrics_port(consumer.output()) is not None, timeout=60, what="the metrics server")
    port = metrics_port(consumer.output())
    assert port is not None
    return port


def sample(port: int, name: str) -> float:
    """One sample of a consumer's /metrics (NaN when absent)."""
    return scrape(port).get(name, math.nan)


def halted(consumer: ConsumerProcess) -> bool:
    """True while the consumer reports `microbatch_halted 1`."""
    port = metrics_port(consumer.output())
    return port is not None and scrape(port).get("microbatch_halted") == 1
