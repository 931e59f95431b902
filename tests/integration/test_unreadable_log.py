"""A partition log the Kafka client cannot read, against a real broker: one record batch's bytes damaged
on the broker's disk. librdkafka (with check.crcs) reports the failed CRC check and reads on past the
batch; the consumer must halt on its stored position rather than write past messages it never read, and
read them once the log is whole again.

Without the halt, librdkafka 2.16 shows what reading on means: its skip ends short of the batch (a FIXME
in its message set reader), it reads the next "batch" from the wrong bytes, reports an unsupported magic
byte at an offset made of them, and fetches from there. Here that offset is beyond the log, so the
partition was placed again and again, a few times a second, and nothing was written; an offset within
the log would have skipped messages for good."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import Producer

from consumer.workload import InvoiceWorkload, WorkloadOptions
from devstack.kafka_server import KafkaServer
from devstack.verify import caught_up, stored_positions
from tests.integration.test_writer import count
from tests.support.consumer_process import ConsumerProcess, run_cli
from tests.support.dead_letters import create_topic
from tests.support.services import KafkaService, wait_until

# A record batch (Kafka's message format v2): base offset (int64), the length of the rest (int32), the
# partition leader epoch (int32), the magic byte, the CRC-32C of everything after it (uint32), the
# attributes (int16), the last offset delta (int32); then the batch's other fields and its records.
_HEAD = struct.Struct(">qiibIhi")
EVENTS, BATCHES = 300, 3


@pytest.fixture
def broker(kafka: KafkaService, request: pytest.FixtureRequest) -> KafkaServer:
    """A broker whose data directory this test can reach: the session's when it runs one, else its own."""
    if kafka.server is not None:
        return kafka.server
    own: KafkaServer = request.getfixturevalue("own_kafka")
    return own


def _produce_in_batches(bootstrap: str, topic: str) -> None:
    """EVENTS good invoice events in BATCHES record batches (flushed one by one, uncompressed: a batch's
    values are its bytes as sent)."""
    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": "none", "linger.ms": 1000})
    messages = list(InvoiceWorkload(WorkloadOptions(count=EVENTS, seed=31)).messages())
    step = EVENTS // BATCHES
    for start in range(0, EVENTS, step):
        for message in messages[start : start + step]:
            producer.produce(topic, key=message.key, value=message.value, partition=0)
        assert producer.flush(30) == 0, "every event acknowledged"


def _batch_with(segment: Path, offset: int) -> tuple[int, int, int, int]:
    """(base offset, last offset, byte position, size) of the record batch of `segment` holding `offset`."""
    data = segment.read_bytes()
    position = 0
    while position + _HEAD.size <= len(data):
        base, length, _epoch, _magic, _crc, _attributes, last_delta = _HEAD.unpack_from(data, position)
        if base <= offset <= base + last_delta:
            return base, base + last_delta, position, 12 + length
        position += 12 + length
    raise AssertionError(f"{segment.name} has no record batch holding offset {offset}")


@contextmanager
def _damaged(segment: Path, at: int) -> Iterator[Callable[[], None]]:
    """One byte of `segment` at `at` flipped, as a disk's bit rot would; yields the repair (also made on exit)."""
    with segment.open("r+b") as log:
        log.seek(at)
        original = log.read(1)
        log.seek(at)
        log.write(bytes([original[0] ^ 0x20]))

    def repair() -> None:
        with segment.open("r+b") as log:
            log.seek(at)
            log.write(original)

    try:
        yield repair
    finally:
        repair()


def test_a_damaged_batch_halts_the_partition_until_the_log_reads_again(
    broker: KafkaServer, database_url: str, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], unique: str,
) -> None:  # fmt: skip
    topic, group = f"invoices-{unique}", f"group-{unique}"

    def stored_at() -> int | None:
        return stored_positions(database_url, group).get((topic, 0))

    config = {**json.loads(service_env["MICROBATCH_KAFKA_CONFIG"]), "check.crcs": "true"}
    env = {**service_env, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "MICROBATCH_MAX_WAIT_MS": "200",
           "MICROBATCH_KAFKA_CONFIG": json.dumps(config), "MICROBATCH_HALTED_RETRY_S": "2"}  # fmt: skip
    assert run_cli(env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    create_topic(broker.bootstrap, topic, 1)
    _produce_in_batches(broker.bootstrap, topic)
    segments = sorted((broker.workdir / "data" / f"{topic}-0").glob("*.log"))
    assert len(segments) == 1, segments
    base, last, position, size = _batch_with(segments[0], EVENTS // 2)
    assert base > 0 and last < EVENTS - 1, "the damaged batch has batches before and after it"

    # A byte of a record's value, in the middle of the batch: its CRC no longer matches.
    with _damaged(segments[0], position + size // 2) as repair:
        consumer = consumer_factory(env, invoice_pipeline)

        def halted() -> bool:
            return "could not read the log at offset" in consumer.output()

        # Either it halts, or it writes on past the batch it skipped (the failure shown, if it ever does).
        wait_until(lambda: halted() or (stored_at() or 0) > base, timeout=90,
                   what="the consumer to halt on the damaged batch, or to write past it")  # fmt: skip
        stored = stored_at()
        assert stored is None or stored <= base, f"stored position {stored} passed offsets {base}..{last}, never read"
        assert halted()
        # What was read before the damaged batch is written before the halt: an operator who skips the
        # batch (positions reset past it) skips it only.
        assert stored == base
        assert count(database_url, "SELECT count(*) FROM transactions") == base
        assert f"halted on the stored position {base}," in consumer.output()
        repair()
        wait_until(lambda: caught_up(database_url, group, broker.bootstrap, topic, 1), timeout=90,
                   what="every event written once the batch reads again")  # fmt: skip
    assert stored_at() == EVENTS
    assert count(database_url, "SELECT count(*) FROM transactions") == EVENTS
    assert count(database_url, "SELECT sum(lines) FROM item_sales_daily") == EVENTS
    assert consumer.terminate() == 0
