"""The devstack's secured servers are real: a test PKI made with openssl and keytool, PostgreSQL over
verified TLS with password logins for `microbatch_password_login`, Kafka over SASL_SSL (SCRAM-SHA-512)
with the StandardAuthorizer and ACLs.

The module starts its own servers (whatever KAFKA_BOOTSTRAP_SERVERS or DATABASE_URL say) and removes
them at the end; every wait polls against a deadline.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AclOperation, AdminClient, NewTopic  # type: ignore[attr-defined]
from psycopg import sql

from devstack import DevstackError
from devstack.kafka_acls import client_config, grant, group, topic
from devstack.kafka_server import KafkaSecurity, KafkaServer, start_kafka
from devstack.postgres_server import TLS_LOGIN_ROLE, PostgresServer, start_postgres
from devstack.tls import TestPki, make_other_ca, make_test_pki

DEADLINE_S = 30.0
APP_PASSWORD = "s3cret p@ss/w:rd%?&="  # noqa: S105 - a test server's password, with URL-special characters


def _quiet() -> logging.Logger:
    """librdkafka's own log lines (reconnect storms after a refused handshake) go nowhere."""
    logger = logging.getLogger("tests.devstack_security.librdkafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    # Under /tmp and traversable: the PostgreSQL server runs as the postgres user when we are root.
    path = Path(tempfile.mkdtemp(prefix="microbatch-security-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(scratch: Path) -> TestPki:
    return make_test_pki(scratch / "pki")


@pytest.fixture(scope="module")
def other_ca(scratch: Path) -> Path:
    return make_other_ca(scratch / "other-ca")


@pytest.fixture(scope="module")
def tls_postgres(scratch: Path, pki: TestPki) -> Iterator[PostgresServer]:
    server = start_postgres(scratch / "postgres", tls=pki)
    try:
        yield server
    finally:
        server.stop("immediate")


@pytest.fixture(scope="module")
def app_role(tls_postgres: PostgresServer) -> str:
    """A login role in microbatch_password_login, with a password full of URL-special characters."""
    with psycopg.connect(tls_postgres.admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE app_login LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Literal(APP_PASSWORD), sql.Identifier(TLS_LOGIN_ROLE)
            )
        )
    return "app_login"


@pytest.fixture(scope="module")
def security(pki: TestPki) -> KafkaSecurity:
    return KafkaSecurity(pki, {"alice": secrets.token_urlsafe(12), "mallory": secrets.token_urlsafe(12)})


@pytest.fixture(scope="module")
def secured_kafka(scratch: Path, security: KafkaSecurity) -> Iterator[KafkaServer]:
    server = start_kafka(scratch / "kafka", security=security)
    try:
        yield server
    finally:
        server.stop()


def _sasl(server: KafkaServer, security: KafkaSecurity, user: str, **overrides: object) -> dict[str, object]:
    assert server.sasl_bootstrap is not None
    return {
        "bootstrap.servers": server.sasl_bootstrap,
        **client_config(security, user),
        "logger": _quiet(),
        **overrides,
    }


def _new_topic(server: KafkaServer) -> str:
    name = f"secured-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": server.bootstrap})  # PLAINTEXT: User:ANONYMOUS, a super user
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(timeout=DEADLINE_S)
    return name


def _refused(url: str, match: str) -> None:
    """Connecting to `url` raises OperationalError matching `match` (a connection that opens is closed)."""
    with pytest.raises(psycopg.OperationalError, match=match), psycopg.connect(url, connect_timeout=10):
        pass


def _first(consumer: Consumer, *, until: Callable[[Message], bool]) -> Message:
    """The first message (or error event) for which `until` holds, within DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and until(message):
            return message
    raise AssertionError(f"nothing matching arrived within {DEADLINE_S:.0f} s")


def _first_error(config: dict[str, object]) -> KafkaError:
    """The first error a producer with `config` reports through error_cb, within DEADLINE_S."""
    errors: list[KafkaError] = []
    producer = Producer({**config, "error_cb": errors.append})
    deadline = time.monotonic() + DEADLINE_S
    while not errors and time.monotonic() < deadline:
        producer.poll(0.2)
    assert errors, f"no error reported within {DEADLINE_S:.0f} s"
    return errors[0]


# --- the PKI -------------------------------------------------------------------------------------


def test_pki_server_certificate_is_signed_by_its_ca_for_both_hosts(pki: TestPki, other_ca: Path) -> None:
    for check in (["-verify_ip", "127.0.0.1"], ["-verify_hostname", "localhost"]):
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(pki.ca_cert), *check, str(pki.server_cert)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
    wrong_host = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki.ca_cert), "-verify_hostname", "example.com", str(pki.server_cert)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert wrong_host.returncode != 0
    untrusted = subprocess.run(
        ["openssl", "verify", "-CAfile", str(other_ca), str(pki.server_cert)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert untrusted.returncode != 0
    assert pki.server_key.stat().st_mode & 0o777 == 0o600


def test_pki_stores_open_with_their_password(pki: TestPki) -> None:
    listed = {}
    for store in (pki.keystore, pki.truststore):
        result = subprocess.run(
            ["keytool", "-list", "-keystore", str(store), "-storetype", "PKCS12", "-storepass:env", "STORE_PASSWORD"],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "STORE_PASSWORD": pki.store_password},
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        listed[store.name] = result.stdout
    assert "PrivateKeyEntry" in listed[pki.keystore.name]
    assert "trustedCertEntry" in listed[pki.truststore.name]


def test_pki_without_openssl_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(DevstackError, match="openssl is not installed"):
        make_test_pki(tmp_path / "pki")


def test_pki_tool_failure_shows_its_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("openssl", "keytool"):
        fake = tools / name
        fake.write_text("#!/bin/sh\necho 'simulated failure of' \"$1\" >&2\nexit 3\n")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    with pytest.raises(DevstackError, match=r"(?s)openssl genpkey.*exit 3.*simulated failure of genpkey"):
        make_test_pki(tmp_path / "pki")


# --- PostgreSQL ----------------------------------------------------------------------------------


def test_password_login_role_connects_over_verified_tls(tls_postgres: PostgresServer, app_role: str) -> None:
    assert tls_postgres.tls is not None
    for host in ("127.0.0.1", "localhost"):  # the certificate's IP and DNS names
        with psycopg.connect(tls_postgres.tls_url(app_role, APP_PASSWORD, host=host), connect_timeout=10) as conn:
            row = conn.execute("SELECT ssl, current_user FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True, app_role), host


def test_password_login_role_refuses_a_server_signed_by_another_ca(
    tls_postgres: PostgresServer, app_role: str, other_ca: Path
) -> None:
    _refused(tls_postgres.tls_url(app_role, APP_PASSWORD, root_cert=other_ca), "certificate verify failed")


def test_password_login_role_without_tls_is_rejected(tls_postgres: PostgresServer, app_role: str) -> None:
    url = tls_postgres.tls_url(app_role, APP_PASSWORD, sslmode="disable")
    _refused(url, r"pg_hba\.conf rejects connection .*no encryption")


def test_password_login_role_needs_its_password(tls_postgres: PostgresServer, app_role: str) -> None:
    _refused(tls_postgres.tls_url(app_role, "not the password"), "password authentication failed")


def test_other_roles_are_trusted_without_tls_as_before(tls_postgres: PostgresServer) -> None:
    with psycopg.connect(tls_postgres.admin_url, autocommit=True) as conn:
        conn.execute("CREATE ROLE plain_login LOGIN")
    for url in (tls_postgres.url, tls_postgres.url.replace("postgres@", "plain_login@")):
        with psycopg.connect(url, sslmode="disable", connect_timeout=10) as conn:
            row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (False,), url


# --- Kafka ---------------------------------------------------------------------------------------


def test_scram_password_the_storage_tool_cannot_take_is_refused_up_front(pki: TestPki, tmp_path: Path) -> None:
    with pytest.raises(DevstackError, match="letters, digits"):
        start_kafka(tmp_path / "kafka", security=KafkaSecurity(pki, {"carol": "has,a=comma]"}))
    assert not (tmp_path / "kafka").exists()


def test_user_with_acls_produces_and_consumes_over_sasl_ssl(
    secured_kafka: KafkaServer, security: KafkaSecurity
) -> None:
    name, group_id = _new_topic(secured_kafka), f"g-{uuid.uuid4().hex[:8]}"
    grant(secured_kafka.bootstrap, "alice", [
        topic(name, AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE),
        group(group_id, AclOperation.READ),
    ])  # fmt: skip
    delivered: list[KafkaError | None] = []
    producer = Producer(_sasl(secured_kafka, security, "alice"))
    producer.produce(name, b"over SASL_SSL", on_delivery=lambda err, _msg: delivered.append(err))
    assert producer.flush(DEADLINE_S) == 0
    assert delivered == [None]

    consumer = Consumer(
        _sasl(secured_kafka, security, "alice", **{"group.id": group_id, "auto.offset.reset": "earliest"})
    )
    try:
        consumer.subscribe([name])
        message = _first(consumer, until=lambda m: True)
        assert message.error() is None, message.error()
        assert message.value() == b"over SASL_SSL"
        committed = consumer.commit(message=message, asynchronous=False)  # READ on the group lets it commit
        assert [(tp.topic, tp.offset, tp.error) for tp in committed] == [(name, 1, None)]
    finally:
        consumer.close()


def test_wrong_password_is_an_authentication_error(secured_kafka: KafkaServer, security: KafkaSecurity) -> None:
    error = _first_error(_sasl(secured_kafka, security, "alice", **{"sasl.password": "not-alices-password"}))
    assert error.code() == KafkaError._AUTHENTICATION, error
    assert "SCRAM-SHA-512" in error.str()


def test_broker_certificate_from_another_ca_fails_the_handshake(
    secured_kafka: KafkaServer, security: KafkaSecurity, other_ca: Path
) -> None:
    error = _first_error(_sasl(secured_kafka, security, "alice", **{"ssl.ca.location": str(other_ca)}))
    assert error.code() in {KafkaError._SSL, KafkaError._TRANSPORT}, error
    assert "certificate verify failed" in error.str()


def test_user_without_read_acl_gets_topic_authorization_failed(
    secured_kafka: KafkaServer, security: KafkaSecurity
) -> None:
    name, group_id = _new_topic(secured_kafka), f"g-{uuid.uuid4().hex[:8]}"
    # Allowed to see the topic and use the group, not to read or write the topic.
    grant(secured_kafka.bootstrap, "mallory", [topic(name, AclOperation.DESCRIBE), group(group_id, AclOperation.READ)])
    delivered: list[KafkaError | None] = []
    producer = Producer(_sasl(secured_kafka, security, "mallory", **{"message.timeout.ms": int(DEADLINE_S * 1000)}))
    producer.produce(name, b"refused", on_delivery=lambda err, _msg: delivered.append(err))
    assert producer.flush(DEADLINE_S + 5) == 0
    assert len(delivered) == 1 and delivered[0] is not None
    assert delivered[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, delivered[0]

    consumer = Consumer(
        _sasl(secured_kafka, security, "mallory", **{"group.id": group_id, "auto.offset.reset": "earliest"})
    )
    try:
        consumer.subscribe([name])
        event = _first(consumer, until=lambda m: m.error() is not None)
        error = event.error()
        assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error
    finally:
        consumer.close()


def test_restart_keeps_the_secured_listener_users_and_acls(secured_kafka: KafkaServer, security: KafkaSecurity) -> None:
    name, group_id = _new_topic(secured_kafka), f"g-{uuid.uuid4().hex[:8]}"
    grant(secured_kafka.bootstrap, "alice", [
        topic(name, AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE),
        group(group_id, AclOperation.READ),
    ])  # fmt: skip
    before = secured_kafka.sasl_bootstrap
    secured_kafka.restart()
    assert secured_kafka.sasl_bootstrap == before
    delivered: list[KafkaError | None] = []
    producer = Producer(_sasl(secured_kafka, security, "alice"))
    producer.produce(name, b"after restart", on_delivery=lambda err, _msg: delivered.append(err))
    assert producer.flush(DEADLINE_S) == 0
    assert delivered == [None]
    consumer = Consumer(
        _sasl(secured_kafka, security, "alice", **{"group.id": group_id, "auto.offset.reset": "earliest"})
    )
    try:
        consumer.subscribe([name])
        message = _first(consumer, until=lambda m: True)
        assert message.error() is None, message.error()
        assert message.value() == b"after restart"
    finally:
        consumer.close()
