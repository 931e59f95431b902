"""`microbatch produce`: the seeded load generators, with a progress bar and the expected totals.

Every message counts only once the broker acknowledged it (a delivery report without error); a
run that ends with unacknowledged messages fails loudly instead of writing wrong totals.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from consumer.generators import new_workload
from consumer.kafka_clients import made
from consumer.workload import Message as GeneratedMessage
from consumer.workload import WorkloadOptions


class ProduceError(Exception):
    """Producing failed (broker unreachable, messages not acknowledged); str() says what to check."""


@dataclass
class ProduceResult:
    acked: int
    seconds: float


class Ledger:
    """One JSON line per acknowledged message: where it landed and what the generator put in it.

    The fault-injection oracle reads it back: every acknowledged good event must end up written
    exactly once, every bad one dead-lettered.
    """

    def __init__(self, out: IO[bytes] | None) -> None:
        self._out = out

    @classmethod
    @contextmanager
    def open(cls, path: Path | None) -> Iterator[Ledger]:
        if path is None:
            yield cls(None)
            return
        try:
            out = path.open("ab")
        except OSError as exc:
            raise ProduceError(f"cannot write the ledger to {path}: {exc.strerror or exc}") from None
        with out:
            yield cls(out)

    def record(self, message: Message, generated: object) -> None:
        """One line: the coordinates, the generator's label, and the exact bytes (base64) acknowledged."""
        if self._out is None or not isinstance(generated, GeneratedMessage):
            return
        entry = {
            "topic": message.topic(), "partition": message.partition(), "offset": message.offset(),
            "good": generated.good, "kind": generated.kind, "event_id": generated.event_id,
            "key": _b64(generated.key), "value": _b64(generated.value),
            "headers": [[name, _b64(value)] for name, value in generated.headers],
        }  # fmt: skip
        self._out.write(orjson.dumps(entry) + b"\n")


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def ensure_topic(admin: AdminClient, topic: str, partitions: int, *, timeout: float = 30.0) -> int:
    """Create `topic` with `partitions` partitions unless it exists; return its partition count."""
    metadata = admin.list_topics(timeout=timeout)
    existing = metadata.topics.get(topic)
    if existing is not None and existing.error is None:
        return len(existing.partitions)
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1)])
    try:
        futures[topic].result(timeout=timeout)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = admin.list_topics(topic=topic, timeout=timeout).topics.get(topic)
        if found is not None and found.error is None and len(found.partitions) == partitions:
            return partitions
        time.sleep(0.2)
    raise ProduceError(f"topic {topic} was created but its {partitions} partitions did not appear within {timeout} s")


def produce_workload(
    producer_config: dict[str, str | int | bool],
    topic: str,
    options: WorkloadOptions,
    *,
    partitions: int = 4,
    rate: float | None = None,
    expected: Path | None = None,
    on_ack: Callable[[Message, object], None] | None = None,
    console: Console | None = None,
) -> ProduceResult:
    """Produce `options.count` messages to `topic` (created if missing) and wait for every ack: invoice
    events, or vendor-invoice events for VendorWorkloadOptions (consumer.generators.new_workload).

    `rate` limits messages per second; `expected` receives the totals as JSON; `on_ack(message,
    generated)` is called for every acknowledged message with the generator's record of it.
    """
    if expected is not None:  # found before anything is produced, not once it all was
        _writable(expected, "the expected totals")
    bootstrap = str(producer_config["bootstrap.servers"])
    # The producer's own address and credentials (security.*, sasl.*, ssl.*), not its tuning.
    reach = {
        k: v
        for k, v in producer_config.items()
        if k == "bootstrap.servers" or k.startswith(("security.", "sasl.", "ssl."))
    }
    admin = made(AdminClient, reach)
    try:
        ensure_topic(admin, topic, partitions)
    except KafkaException as exc:
        raise ProduceError(f"cannot reach Kafka at {bootstrap} ({exc.args[0].str()}): is the broker running?") from None
    config = {
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        **producer_config,
    }
    producer = made(Producer, config)
    workload = new_workload(options)
    failures: list[str] = []
    acked = 0

    def report(err: KafkaError | None, msg: Message, generated: object) -> None:
        nonlocal acked
        if err is not None:
            failures.append(err.str())
            return
        acked += 1
        if on_ack is not None:
            on_ack(msg, generated)

    started = time.monotonic()
    progress = Progress(
        TextColumn("producing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]:>9} msg/s"),
        TimeRemainingColumn(), console=console or Console(stderr=True), transient=False,
    )  # fmt: skip
    with progress:
        task = progress.add_task("produce", total=options.count, rate="-")
        for n, generated in enumerate(workload.messages(), start=1):
            while True:
                try:
                    producer.produce(
                        topic, value=generated.value, key=generated.key, headers=list(generated.headers),
                        on_delivery=_bind(report, generated),
                    )  # fmt: skip
                    break
                except BufferError:
                    producer.poll(0.05)  # local queue full: let deliveries drain
            producer.poll(0)
            if rate:
                _pace(started, n, rate)
            if n % 2000 == 0 or n == options.count:
                elapsed = max(time.monotonic() - started, 1e-6)
                progress.update(task, completed=n, rate=f"{n / elapsed:,.0f}")
        remaining = producer.flush(60)
    seconds = time.monotonic() - started
    if failures or remaining or acked != options.count:
        detail = failures[0] if failures else f"{remaining} message(s) still queued after 60 s"
        raise ProduceError(f"only {acked} of {options.count} messages were acknowledged: {detail}")
    if expected is not None:
        expected.write_bytes(workload.totals.to_json())
    return ProduceResult(acked, seconds)


def _writable(path: Path, what: str) -> None:
    """Raise ProduceError unless `path` could be written, without creating it: a file that may be
    replaced, or none yet in a directory that may hold it."""
    if path.is_dir():
        problem = "Is a directory"
    elif not path.parent.is_dir():
        problem = "No such file or directory"
    elif not os.access(path if path.exists() else path.parent, os.W_OK):
        problem = "Permission denied"
    else:
        return
    raise ProduceError(f"cannot write {what} to {path}: {problem}")


def _bind(
    report: Callable[[KafkaError | None, Message, object], None], generated: object
) -> Callable[[KafkaError | None, Message], None]:
    """A delivery callback that remembers which generated message it reports on."""

    def deliver(err: KafkaError | None, msg: Message) -> None:
        report(err, msg, generated)

    return deliver


def _pace(started: float, sent: int, rate: float) -> None:
    """Sleep just enough to keep the average at `rate` messages per second (a producer's pacing)."""
    ahead = sent / rate - (time.monotonic() - started)
    if ahead > 0.001:
        time.sleep(ahead)
