"""Steps the dead-letter path tests share: ledgered streams, exact messages of any size recorded in a
ledger the oracle reads, and the consumer's health and metrics."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tests.support.consumer_process import run_cli
from tests.support.oracle import Entry, Verdict, check
from tests.support.services import wait_until

PARTITIONS = 4
Outgoing = tuple[bytes | None, bytes | None, list[tuple[str, str | bytes | None]]]


def init_db(env: dict[str, str], pipeline: Path) -> None:
    result = run_cli(env, "init-db", "--pipeline", str(pipeline))
    assert result.returncode == 0, result.stdout + result.stderr


def create_topic(bootstrap: str, topic: str, partitions: int, **config: str) -> None:
    """Create `topic` with these topic configs (e.g. max_message_bytes="300000") and wait until it is listed."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    settings = {name.replace("_", "."): value for name, value in config.items()}
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1, config=settings)])[
        topic
    ].result(timeout=30)
    wait_until(lambda: topic in admin.list_topics(timeout=10).topics, timeout=30, what=f"topic {topic} to exist")


def produce_stream(
    env: dict[str, str], pipeline: Path, ledger: Path, count: int, *extra: str, partitions: int = PARTITIONS
) -> None:
    """`microbatch produce` of `count` seeded invoice events (over `partitions` partitions when it creates
    the topic), recorded in `ledger`."""
    result = run_cli(env, "produce", "--pipeline", str(pipeline), "--count", str(count),
                     "--partitions", str(partitions), "--ledger", str(ledger), *extra)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def produce_noisy(env: dict[str, str], pipeline: Path, ledger: Path, count: int, *, seed: int, partitions: int) -> None:
    """`produce_stream` with 1% invalid messages and 1% producer duplicates."""
    produce_stream(env, pipeline, ledger, count, "--seed", str(seed), "--bad-ratio", "0.01",
                   "--duplicate-ratio", "0.01", partitions=partitions)  # fmt: skip


def _b64(data: str | bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def produce_recorded(bootstrap: str, topic: str, messages: list[tuple[int, str, Outgoing]]) -> list[Entry]:
    """Produce (partition, kind, (key, value, headers)) of any size up to 5 MB; return their ledger entries
    (as `microbatch produce --ledger` writes them), so the oracle judges them with the rest."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "message.max.bytes": 5 * 1024 * 1024})  # fmt: skip
    entries: dict[int, Entry] = {}
    errors: list[str] = []

    def recorder(index: int, kind: str, sent: Outgoing) -> Callable[[KafkaError | None, Message], None]:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(err.str())
                return
            entries[index] = {
                "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(), "good": False,
                "kind": kind, "event_id": None, "key": _b64(sent[0]), "value": _b64(sent[1]),
                "headers": [[name, _b64(data)] for name, data in sent[2]],
            }  # fmt: skip

        return report

    for index, (partition, kind, sent) in enumerate(messages):
        key, value, headers = sent
        producer.produce(topic, key=key, value=value, headers=list(headers), partition=partition,
                         on_delivery=recorder(index, kind, sent))  # fmt: skip
        producer.poll(0)
    assert producer.flush(60) == 0
    assert errors == []
    return [entries[i] for i in range(len(messages))]


def verdict(bootstrap: str, database_url: str, unique: str, ledger: list[Entry], *, copies: int) -> Verdict:
    """The oracle over the whole stream (tests/support/oracle.py)."""
    topic = f"invoices-{unique}"
    found = check(ledger, database_url, bootstrap, topic, f"{topic}.dlq", f"group-{unique}", PARTITIONS,
                  dead_letter_copies_allowed=copies)  # fmt: skip
    assert found.ok, found.details
    return found


def readyz(port: int) -> tuple[int, str]:
    """Status and body of /readyz (one line, without its newline)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status), response.read().decode().rstrip("\n")
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode().rstrip("\n")


DEAD_LETTER_RETRIES = 'microbatch_retries_total{failure="dead_letter",sqlstate_class="none"}'
