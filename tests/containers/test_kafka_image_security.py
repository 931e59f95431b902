"""The broker image (images/kafka) serves SASL_SSL too: SCRAM-SHA-512 users made at format time
(SCRAM_SHA_512_USERS), the test PKI mounted read-only, the StandardAuthorizer with ACLs; a user with
ACLs produces and consumes, one without is refused, a wrong password fails authentication."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AclOperation, AdminClient, NewTopic  # type: ignore[attr-defined]

from devstack.containers import start_secure_kafka_container
from devstack.kafka_acls import client_config, grant, group, topic
from devstack.kafka_server import KafkaSecurity
from devstack.tls import make_test_pki

DEADLINE_S = 30.0
USERS = {"alice": "Alice.Pw-41", "mallory": "Mallory.Pw-17"}


@pytest.fixture(scope="module")
def broker(engine: str) -> Iterator[tuple[str, str, KafkaSecurity]]:
    """(PLAINTEXT bootstrap, SASL_SSL bootstrap, security) of a broker container of the image."""
    scratch = Path(tempfile.mkdtemp(prefix="microbatch-image-sasl-", dir="/tmp"))
    security = KafkaSecurity(make_test_pki(scratch / "pki"), USERS)
    before = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = engine
    try:
        plain, sasl, stop, _label = start_secure_kafka_container(security)
    finally:
        if before is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = before
    try:
        yield plain, sasl, security
    finally:
        stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _client(sasl: str, security: KafkaSecurity, user: str, **extra: object) -> dict[str, object]:
    quiet = logging.getLogger("tests.image_sasl.librdkafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    return {"bootstrap.servers": sasl, **client_config(security, user), "logger": quiet, **extra}


def _delivered(config: dict[str, object], name: str) -> KafkaError | None:
    results: list[KafkaError | None] = []
    producer = Producer({**config, "message.timeout.ms": int(DEADLINE_S * 1000)})
    producer.produce(name, b"over SASL_SSL", on_delivery=lambda err, _msg: results.append(err))
    assert producer.flush(DEADLINE_S + 5) == 0
    assert len(results) == 1
    return results[0]


def test_the_broker_image_serves_sasl_ssl_with_scram_users_and_acls(broker: tuple[str, str, KafkaSecurity]) -> None:
    plain, sasl, security = broker
    name, group_id = f"secure-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": plain})  # kept: a collected client cancels its requests
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(DEADLINE_S)
    grant(plain, "alice", [topic(name, AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE),
                           group(group_id, AclOperation.READ)])  # fmt: skip

    assert _delivered(_client(sasl, security, "alice"), name) is None
    consumer = Consumer(_client(sasl, security, "alice", **{"group.id": group_id, "auto.offset.reset": "earliest"}))
    try:
        consumer.subscribe([name])
        deadline, message = time.monotonic() + DEADLINE_S, None
        while message is None and time.monotonic() < deadline:
            message = consumer.poll(1.0)
        assert message is not None and message.error() is None and message.value() == b"over SASL_SSL"
    finally:
        consumer.close()

    refused = _delivered(_client(sasl, security, "mallory"), name)  # authenticated, but no ACL
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, refused

    errors: list[KafkaError] = []
    wrong = Producer(_client(sasl, security, "alice", **{"sasl.password": "Not.Alices-1", "error_cb": errors.append}))
    deadline = time.monotonic() + DEADLINE_S
    while not any(e.code() == KafkaError._AUTHENTICATION for e in errors) and time.monotonic() < deadline:
        wrong.poll(0.5)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
