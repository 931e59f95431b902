"""The consumer as deployed securely: Kafka over SASL_SSL (SCRAM-SHA-512) with the StandardAuthorizer and
exactly the documented ACLs, PostgreSQL over verified TLS as the runtime role, credentials from files.
Each wrong credential, certificate or missing ACL is one clear line; no credential is ever printed.

The broker is this module's own (a local process with a test CA); PostgreSQL is the session's, whose
consumers connect with sslmode=verify-full when it is the local one (tests.support.runtime_role).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AclOperation, AdminClient, NewTopic  # type: ignore[attr-defined]

from devstack.kafka_acls import AclSpec, grant, group, topic
from devstack.kafka_server import KafkaSecurity, KafkaServer, start_kafka
from devstack.tls import TestPki, make_other_ca, make_test_pki
from devstack.verify import caught_up, high_watermarks, read_topic
from tests.support.consumer_process import ConsumerProcess, run_cli
from tests.support.kafka_io import port_of, probe
from tests.support.oracle import check, read_ledger
from tests.support.runtime_role import RUNTIME_PASSWORD
from tests.support.services import wait_until

PARTITIONS = 3
# Recognisable credentials (SCRAM allows letters, digits and ._~@+-): grepped for in everything printed.
CONSUMER_PASSWORD = "KafkaPw.Consumer-7Qz"  # noqa: S105
WRONG_PASSWORD = "Not.The-Password1"  # noqa: S105
USERS = {"microbatch": CONSUMER_PASSWORD, "producer": "KafkaPw.Producer-3Xw", "operator": "KafkaPw.Operator-9Lm"}


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="microbatch-secure-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(scratch: Path) -> TestPki:
    return make_test_pki(scratch / "pki")


@pytest.fixture(scope="module")
def broker(scratch: Path, pki: TestPki) -> Iterator[KafkaServer]:
    server = start_kafka(scratch / "kafka", security=KafkaSecurity(pki, USERS))
    try:
        yield server
    finally:
        server.stop()


def consumer_acls(source: str, group_id: str, dead_letters: str) -> list[AclSpec]:
    """What docs/OPERATIONS.md ("Kafka ACLs") says the consumer's principal needs, nothing more."""
    return [
        topic(source, AclOperation.READ),
        group(group_id, AclOperation.READ),
        topic(dead_letters, AclOperation.WRITE, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS),
    ]


class SecureStream:
    """One test's topic, dead-letter topic (created beforehand) and group, on the secured broker."""

    def __init__(self, broker: KafkaServer, pki: TestPki, unique: str, workdir: Path) -> None:
        self.broker, self.pki, self.workdir = broker, pki, workdir
        self.topic, self.group = f"invoices-{unique}", f"group-{unique}"
        self.dead_letters = f"{self.topic}.dlq"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})  # the PLAINTEXT listener: a super user
        for name, partitions in ((self.topic, PARTITIONS), (self.dead_letters, 1)):
            admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(30)

    def env(
        self, base: dict[str, str], user: str, *, password: str | None = None, ca: Path | None = None
    ) -> dict[str, str]:
        """`base` over SASL_SSL as `user`: the non-secret settings in a variable, the credentials in a file,
        the database URL (the runtime role's) in a file too."""
        assert self.broker.sasl_bootstrap is not None
        public = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                  "ssl.ca.location": str(ca or self.pki.ca_cert), "session.timeout.ms": "6000",
                  "heartbeat.interval.ms": "1000"}  # fmt: skip
        kafka_secret = self.workdir / f"kafka-{user}.json"
        kafka_secret.write_text(json.dumps({"sasl.username": user, "sasl.password": password or USERS[user]}))
        url_secret = self.workdir / "database-url"
        url_secret.write_text(base["DATABASE_URL"] + "\n")
        env = {k: v for k, v in base.items() if k != "DATABASE_URL"}
        env.update(KAFKA_BOOTSTRAP_SERVERS=self.broker.sasl_bootstrap, MICROBATCH_KAFKA_CONFIG=json.dumps(public))
        env.update(MICROBATCH_KAFKA_CONFIG_FILE=str(kafka_secret), MICROBATCH_DATABASE_URL_FILE=str(url_secret))
        return env


@pytest.fixture
def stream(broker: KafkaServer, pki: TestPki, unique: str, tmp_path: Path) -> SecureStream:
    return SecureStream(broker, pki, unique, tmp_path)


def _pipeline(path: Path, stream: SecureStream) -> Path:
    assert stream.topic in path.read_text()
    return path


def _http(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as error:
        return str(error.read().decode())


def test_a_whole_run_over_sasl_ssl_and_tls_with_exact_acls_writes_everything_and_prints_no_secret(
    broker: KafkaServer, stream: SecureStream, service_env: dict[str, str], database_url: str,
    invoice_pipeline: Path, consumer_factory: Callable[..., ConsumerProcess], tmp_path: Path,
) -> None:  # fmt: skip
    pipeline = _pipeline(invoice_pipeline, stream)
    assert run_cli(service_env, "init-db", "--pipeline", str(pipeline)).returncode == 0
    grant(broker.bootstrap, "microbatch", consumer_acls(stream.topic, stream.group, stream.dead_letters))
    grant(broker.bootstrap, "producer", [topic(stream.topic, AclOperation.WRITE, AclOperation.DESCRIBE)])
    grant(broker.bootstrap, "operator", [topic(stream.dead_letters, AclOperation.READ),
                                         topic(stream.topic, AclOperation.WRITE, AclOperation.DESCRIBE)])  # fmt: skip
    env = {**stream.env(service_env, "microbatch"), "MICROBATCH_LOG_LEVEL": "DEBUG"}
    printed: dict[str, str] = {}

    ledger = tmp_path / "ledger.jsonl"
    produced = run_cli(stream.env(service_env, "producer"), "produce", "--pipeline", str(pipeline), "--count",
                       "3000", "--partitions", str(PARTITIONS), "--bad-ratio", "0.03", "--seed", "5", "--ledger",
                       str(ledger))  # fmt: skip
    assert produced.returncode == 0, produced.stdout + produced.stderr
    printed["produce"] = produced.stdout + produced.stderr
    consumer = consumer_factory(env, pipeline)
    port = port_of(consumer)
    wait_until(lambda: caught_up(database_url, stream.group, broker.bootstrap, stream.topic, PARTITIONS),
               timeout=120, what="the consumer to catch up over SASL_SSL and TLS")  # fmt: skip
    wait_until(lambda: probe(port, "/readyz") == 200, timeout=30, what="readiness")
    printed.update({path: _http(port, path) for path in ("/metrics", "/readyz", "/healthz")})
    for command in (("status", "--json"), ("check-config",)):
        result = run_cli(env, *command, "--pipeline", str(pipeline))
        assert result.returncode == 0, result.stdout + result.stderr
        printed[command[0]] = result.stdout + result.stderr
    assert consumer.terminate() == 0
    printed["the consumer's log (DEBUG)"] = consumer.output()

    verdict = check(read_ledger([ledger]), database_url, broker.bootstrap, stream.topic, stream.dead_letters,
                    stream.group, PARTITIONS)  # fmt: skip
    assert verdict.ok, verdict.details
    letters = read_topic(broker.bootstrap, stream.dead_letters)
    assert len(letters) == verdict.dead_letters > 0
    printed["dead-letter headers"] = "\n".join(repr(letter.raw_headers) for letter in letters)

    # dlq replay, as the operator's principal: READ on the dead-letter topic, WRITE on the source topic.
    before = sum(high_watermarks(broker.bootstrap, stream.topic, PARTITIONS).values())
    replay = run_cli(stream.env(service_env, "operator"), "dlq", "replay", "--pipeline", str(pipeline))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    printed["dlq replay"] = replay.stdout + replay.stderr
    assert sum(high_watermarks(broker.bootstrap, stream.topic, PARTITIONS).values()) == before + len(letters)

    # Error messages: a wrong Kafka password, a wrong database password.
    wrong = run_cli(stream.env(service_env, "microbatch", password=WRONG_PASSWORD), "run", "--pipeline", str(pipeline))
    printed["a wrong password's error"] = wrong.stdout + wrong.stderr
    assert wrong.returncode == 2
    wrong_url = service_env["DATABASE_URL"].replace(RUNTIME_PASSWORD, WRONG_PASSWORD)
    assert wrong_url != service_env["DATABASE_URL"]
    wrong_env = {**{k: v for k, v in env.items() if k != "MICROBATCH_DATABASE_URL_FILE"}, "DATABASE_URL": wrong_url}
    refused = run_cli(wrong_env, "check-config", "--pipeline", str(pipeline))
    printed["a wrong database password's error"] = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "refused the login" in refused.stdout, refused.stdout + refused.stderr
    secrets = [*USERS.values(), RUNTIME_PASSWORD, WRONG_PASSWORD]
    leaks = [(where, text[max(0, text.find(secret) - 80):][:200]) for where, text in printed.items()
             for secret in secrets if secret in text]  # fmt: skip
    assert leaks == [], leaks
    # What was searched is real: the consumer's log at DEBUG, the metrics, the errors, the headers.
    assert "assigned " in printed["the consumer's log (DEBUG)"]
    assert "microbatch_messages_consumed_total" in printed["/metrics"]
    assert "refused the consumer" in printed["a wrong password's error"] and "reason" in printed["dead-letter headers"]


@pytest.mark.parametrize("mistake", ["wrong password", "untrusted certificate"])
def test_a_wrong_kafka_credential_or_certificate_is_one_clear_line_and_exit_2(
    broker: KafkaServer, stream: SecureStream, service_env: dict[str, str], invoice_pipeline: Path,
    mistake: str, tmp_path: Path,
) -> None:  # fmt: skip
    assert run_cli(service_env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    grant(broker.bootstrap, "microbatch", consumer_acls(stream.topic, stream.group, stream.dead_letters))
    if mistake == "wrong password":
        env, cause = stream.env(service_env, "microbatch", password=WRONG_PASSWORD), "Authentication failed"
    else:
        env, cause = (
            stream.env(service_env, "microbatch", ca=make_other_ca(tmp_path / "other")),
            "certificate verify failed",
        )
    result = run_cli(env, "run", "--pipeline", str(invoice_pipeline), timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and cause in output and str(broker.sasl_bootstrap) in output, output
    assert not [secret for secret in (*USERS.values(), WRONG_PASSWORD) if secret in output]


@pytest.mark.parametrize("mistake", ["another CA", "another host name"])
def test_a_postgresql_certificate_that_does_not_verify_stops_the_consumer_with_one_line(
    service_env: dict[str, str], invoice_pipeline: Path, tmp_path: Path, mistake: str
) -> None:
    assert run_cli(service_env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    info = psycopg.conninfo.conninfo_to_dict(service_env["DATABASE_URL"])
    assert info.get("sslmode") == "verify-full", "the session's server speaks TLS with the test CA"
    if mistake == "another CA":
        info["sslrootcert"], cause = str(make_other_ca(tmp_path / "other")), "certificate verify failed"
    else:  # connect to 127.0.0.1, but expect the certificate to name db.example
        info.update(host="db.example", hostaddr="127.0.0.1")
        cause = 'does not match host name "db.example"'
    env = {**service_env, "DATABASE_URL": psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})}
    result = run_cli(env, "run", "--pipeline", str(invoice_pipeline), timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and cause in output and "Traceback" not in output, output
    assert RUNTIME_PASSWORD not in output


@pytest.mark.parametrize("missing", ["READ on the group", "CREATE of the dead-letter topic"])
def test_a_missing_acl_is_a_clear_error(
    broker: KafkaServer, stream: SecureStream, service_env: dict[str, str], invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess], missing: str,
) -> None:  # fmt: skip
    assert run_cli(service_env, "init-db", "--pipeline", str(invoice_pipeline)).returncode == 0
    acls = consumer_acls(stream.topic, stream.group, stream.dead_letters)
    if missing == "READ on the group":
        acls, cause = acls[::2], "Group authorization failed.): grant its principal READ"
    else:  # the consumer must create its dead-letter topic, and may not
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.delete_topics([stream.dead_letters])[stream.dead_letters].result(30)
        cause = f"the dead-letter topic {stream.dead_letters} does not exist and Kafka does not allow the consumer"
    grant(broker.bootstrap, "microbatch", acls)
    result = run_cli(stream.env(service_env, "microbatch"), "run", "--pipeline", str(invoice_pipeline), timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output
    assert cause.lower() in output.lower(), output
