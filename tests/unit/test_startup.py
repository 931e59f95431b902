"""Start-up tells an outage (wait) from a mistake (exit 2): the boundary of consumer/startup.py."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException

from consumer.app import StartupError
from consumer.health import Health
from consumer.settings import Settings
from consumer.startup import StartupGaveUp, database_wait, kafka_wait, wait_for_services
from pipeline.errors import DatabaseFailure, FailureClass, classify, sqlstate_of
from pipeline.schema import Mismatch

HOST = 'connection to server at "10.0.0.5", port 5432 failed: '


@dataclass
class FakeTarget:
    """A target whose table check fails (or not) as told: pure logic, no database."""

    outcome: list[Mismatch] | DatabaseFailure
    spec: Any = field(default_factory=lambda: SimpleNamespace(name="invoices", dead_letter_topic=None))

    def verify_tables(self) -> list[Mismatch]:
        if isinstance(self.outcome, DatabaseFailure):
            raise self.outcome
        return self.outcome


def settings(**values: Any) -> Settings:
    return Settings(database_url="postgresql://app:pw@10.0.0.5/orders", **values)


@pytest.mark.parametrize(
    ("message", "sqlstate"),
    [
        (HOST + 'FATAL:  password authentication failed for user "app"', "28P01"),
        (HOST + 'FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "app"', "28000"),
        (HOST + 'FATAL:  role "app" does not exist', "28000"),
        (HOST + 'FATAL:  database "orders" does not exist', "3D000"),
        (HOST + "FATAL:  the database system is starting up", None),
        (HOST + "Connection refused", None),
        ("failed to resolve host 'db': [Errno -2] Name or service not known", None),
    ],
)
def test_a_refused_login_gets_its_sqlstate_back(message: str, sqlstate: str | None) -> None:
    error = psycopg.OperationalError(message)
    assert sqlstate_of(error) == sqlstate
    expected = FailureClass.TRANSIENT if sqlstate is None else FailureClass.SYSTEMIC
    assert classify(error) is expected


@pytest.mark.parametrize(
    "failure",
    [
        DatabaseFailure(FailureClass.TRANSIENT, None, "Connection refused"),
        DatabaseFailure(FailureClass.TRANSIENT, "57P03", "the database system is starting up"),
        DatabaseFailure(FailureClass.TRANSIENT, None, "failed to resolve host 'db'"),
    ],
)
def test_an_outage_is_waited_for_and_named(failure: DatabaseFailure) -> None:
    reason = database_wait(settings(), FakeTarget(failure))  # type: ignore[arg-type]
    assert reason is not None and reason.startswith("PostgreSQL at 10.0.0.5:5432/orders (")
    assert "pw" not in reason.replace("PostgreSQL", "")


@pytest.mark.parametrize(
    ("failure", "fragment"),
    [
        (DatabaseFailure(FailureClass.SYSTEMIC, "28P01", "password authentication failed"), "refused the login"),
        (DatabaseFailure(FailureClass.SYSTEMIC, "28000", "no pg_hba.conf entry"), "refused the login"),
        (DatabaseFailure(FailureClass.SYSTEMIC, "42501", "permission denied"), "refused access"),
    ],
)
def test_a_refusal_is_a_mistake(failure: DatabaseFailure, fragment: str) -> None:
    with pytest.raises(StartupError, match=fragment):
        database_wait(settings(), FakeTarget(failure))  # type: ignore[arg-type]


def test_missing_tables_are_waited_for_but_contradicting_ones_are_a_mistake() -> None:
    missing = [Mismatch("transactions", "does not exist (run `microbatch init-db`)", init_db_mends=True)]
    reason = database_wait(settings(), FakeTarget(missing))  # type: ignore[arg-type]
    assert reason == "the tables of pipeline 'invoices': table transactions: does not exist (run `microbatch init-db`)"
    contradiction = [*missing, Mismatch("inventory", "column quantity is text, expected bigint")]
    with pytest.raises(StartupError, match="column quantity is text"):
        database_wait(settings(), FakeTarget(contradiction))  # type: ignore[arg-type]


def test_waiting_gives_up_after_startup_timeout_and_keeps_liveness_meanwhile() -> None:
    health = Health(stall_after_s=1.0, waiting_for="the start-up checks")
    health.heartbeat = time.monotonic() - 100  # stale: only the wait's own beats can make it alive
    clock = iter(range(0, 10_000, 1))
    target = FakeTarget(DatabaseFailure(FailureClass.TRANSIENT, None, "Connection refused"))
    with pytest.raises(StartupGaveUp, match=r"startup_timeout_s \(5 s\) waiting for PostgreSQL"):
        wait_for_services(settings(startup_timeout_s=5), target, health, lambda: False,  # type: ignore[arg-type]
                          clock=lambda: float(next(clock)))  # fmt: skip
    assert health.waiting_for is not None and health.waiting_for.startswith("PostgreSQL at")
    assert health.alive()[0]


def test_a_stop_during_the_wait_ends_it() -> None:
    target = FakeTarget(DatabaseFailure(FailureClass.TRANSIENT, None, "Connection refused"))
    calls = iter([False, True])
    assert wait_for_services(settings(), target, Health(), lambda: next(calls, True)) is None  # type: ignore[arg-type]


class FakeAdmin:
    """An AdminClient stand-in: list_topics fails with `down`, create_topics fails with `create`."""

    def __init__(self, config: dict[str, Any], *, down: KafkaError | None = None,
                 create: BaseException | None = None, reported: KafkaError | None = None) -> None:  # fmt: skip
        self.config, self.down, self.create, self.reported = config, down, create, reported

    def list_topics(self, timeout: float) -> SimpleNamespace:
        if self.down is not None:
            raise KafkaException(self.down)
        return SimpleNamespace(topics={})

    def poll(self, timeout: float) -> int:
        if self.reported is not None:
            self.config["error_cb"](self.reported)
        return 0

    def create_topics(self, topics: list[Any]) -> dict[str, Future[None]]:
        future: Future[None] = Future()
        if self.create is None:
            future.set_result(None)
        else:
            future.set_exception(self.create)
        return {topics[0].topic: future}


def kafka(**fake: Any) -> tuple[Any, str | None]:
    return kafka_wait(settings(), "orders.dlq", make_admin=lambda config: FakeAdmin(config, **fake))  # type: ignore[arg-type,return-value]


def test_kafka_unreachable_or_slow_is_waited_for() -> None:
    admin, reason = kafka(down=KafkaError(KafkaError._TRANSPORT))
    assert admin is None and reason is not None and reason.startswith("Kafka at 127.0.0.1:9092 (")
    admin, reason = kafka(create=TimeoutError())  # CreateTopics not answered in time: a slow controller
    assert admin is None and reason == "Kafka at 127.0.0.1:9092 (no answer within 10 s)"
    admin, reason = kafka(create=KafkaException(KafkaError(KafkaError.TOPIC_ALREADY_EXISTS)))
    assert admin is not None and reason is None


def test_kafka_refusing_the_credentials_or_the_topic_is_a_mistake() -> None:
    with pytest.raises(StartupError, match="refused the consumer"):  # reported through error_cb only
        kafka(down=KafkaError(KafkaError._TIMED_OUT), reported=KafkaError(KafkaError._AUTHENTICATION))
    with pytest.raises(
        StartupError, match=r"orders\.dlq does not exist and Kafka does not allow the consumer to create"
    ):
        kafka(create=KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    with pytest.raises(StartupError, match=r"cannot create the dead-letter topic orders\.dlq"):
        kafka(create=KafkaException(KafkaError(KafkaError.POLICY_VIOLATION)))
