"""The servers are real: a consumer-group round trip on Kafka, a COPY on PostgreSQL, the dev stack."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.produce import ensure_topic
from devstack.kafka_server import start_kafka
from devstack.process import pid_alive
from tests.support.services import KafkaService, PostgresService, wait_until


def test_consumer_group_round_trip_with_manual_commits(kafka: KafkaService, unique: str) -> None:
    topic = f"roundtrip-{unique}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    assert ensure_topic(admin, topic, 4) == 4
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True, "acks": "all"})
    acked: list[tuple[int | None, int | None]] = []
    for n in range(400):
        producer.produce(
            topic, key=str(n).encode(), value=f"m{n}".encode(), partition=n % 4,
            on_delivery=lambda err, msg: acked.append((msg.partition(), msg.offset())) if err is None else None,
        )  # fmt: skip
    assert producer.flush(30) == 0
    assert len(acked) == 400

    consumer = Consumer({
        "bootstrap.servers": kafka.bootstrap, "group.id": f"g-{unique}", "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "partition.assignment.strategy": "cooperative-sticky",
    })  # fmt: skip
    consumer.subscribe([topic])
    seen: dict[int, list[int]] = {p: [] for p in range(4)}
    deadline = time.monotonic() + 60
    while sum(map(len, seen.values())) < 400 and time.monotonic() < deadline:
        for message in consumer.consume(100, 0.5):
            assert message.error() is None
            seen[message.partition() or 0].append(message.offset() or 0)
    consumer.commit(asynchronous=False)
    committed = consumer.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
    consumer.close()
    assert {p: sorted(offsets) for p, offsets in seen.items()} == {p: list(range(100)) for p in range(4)}
    assert {tp.partition: tp.offset for tp in committed} == {p: 100 for p in range(4)}
    if kafka.server is not None:
        assert kafka.server.version().startswith("4."), "the local broker must be Apache Kafka 4.x"
        print(f"broker version: Apache Kafka {kafka.server.version()}")


def test_copy_into_a_table(postgres: PostgresService, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        assert version is not None
        print(f"server_version: {version[0]}")
        if postgres.server is not None:
            assert str(version[0]).startswith("15."), "the local server must be PostgreSQL 15"
        conn.execute("CREATE TABLE copied (id bigint PRIMARY KEY, name text NOT NULL)")
        with conn.cursor().copy("COPY copied (id, name) FROM STDIN") as copy:
            for n in range(10_000):
                copy.write_row((n, f"row {n}"))
        row = conn.execute("SELECT count(*), sum(id) FROM copied").fetchone()
    assert row == (10_000, sum(range(10_000)))


def test_dev_stack_up_writes_env_and_down_leaves_nothing() -> None:
    # `devstack up` starts its own local services whatever the environment says.
    # Under /tmp itself: the postgres user cannot enter pytest's private (0700) temporary dirs.
    scratch = Path(tempfile.mkdtemp(prefix="microbatch-stack-", dir="/tmp"))
    scratch.chmod(0o755)
    state = scratch / "stack"
    up = subprocess.run(
        [sys.executable, "-m", "devstack", "up", "--dir", str(state)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    env = dict(line.split("=", 1) for line in (state / "env").read_text().splitlines())
    assert set(env) == {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"}
    try:
        psql = subprocess.run(
            ["psql", env["DATABASE_URL"], "-tAc", "SELECT 1"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert psql.stdout.strip() == "1", psql.stderr
        metadata = AdminClient({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]}).list_topics(timeout=10)
        assert metadata.brokers
        pids = [int(json.loads((state / "state.json").read_text())["kafka"]["pid"])]
        postmaster = Path(state / "postgres" / "data" / "postmaster.pid").read_text().split()[0]
        pids.append(int(postmaster))
    finally:
        down = subprocess.run([sys.executable, "-m", "devstack", "down", "--dir", str(state)], capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
    assert down.returncode == 0, down.stderr
    wait_until(
        lambda: not any(pid_alive(pid) for pid in pids),
        timeout=30,
        what="the stack's processes to exit",
    )
    assert not state.exists()
    scratch.rmdir()


def test_local_broker_unpacks_native_libraries_in_its_own_directory(kafka: KafkaService, unique: str) -> None:
    # lz4-java unpacks a native library into java.io.tmpdir when the broker first reads an lz4 batch and
    # never removes it: in /tmp, every broker a test suite starts left a .so and a .lck behind.
    jvm_default = Path("/tmp")  # noqa: S108 - the JVM's default java.io.tmpdir on Linux: only read here
    scratch = None if kafka.server is not None else Path(tempfile.mkdtemp(prefix="microbatch-lz4-", dir="/tmp"))
    server = kafka.server if scratch is None else start_kafka(scratch)
    assert server is not None
    try:
        before = set(jvm_default.glob("liblz4-java-*"))
        producer = Producer({"bootstrap.servers": server.bootstrap, "compression.type": "lz4"})
        for n in range(100):
            producer.produce(f"lz4-{unique}", value=b"x" * 100, key=str(n).encode())
        assert producer.flush(30) == 0
        assert list((server.workdir / "tmp").glob("liblz4-java-*.so")), "lz4-java unpacked nowhere we know"
        assert set(jvm_default.glob("liblz4-java-*")) == before
    finally:
        if scratch is not None:
            server.stop(hard=True)
            shutil.rmtree(scratch, ignore_errors=True)
