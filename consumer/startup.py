"""Start-up: wait for PostgreSQL and Kafka, and tell an outage from a mistake.

`microbatch run` serves its probes first, then checks the services until they answer:

| what the check finds                                                 | what happens                   |
|----------------------------------------------------------------------|--------------------------------|
| connection refused or timed out, a host name that does not resolve,  | wait: /healthz 200, /readyz    |
| a server starting up (57P03), a broker that does not answer, the     | 503 naming what it waits for,  |
| pipeline's tables not there yet (an init-db job still running)       | then check again               |
| a login refused (28P01, 28000; SASL or TLS refused by the broker), no| StartupError: exit 2 at once   |
| such database (3D000), missing privileges, a table whose columns     | (waiting cannot mend it)       |
| contradict the pipeline                                              |                                |
| still waiting after startup_timeout_s (0, the default: never)        | StartupGaveUp: exit 4          |
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.app import KAFKA_REQUEST_TIMEOUT_S, StartupError, database_error, quiet_logger, security_config
from consumer.health import Health
from consumer.kafka_clients import made
from consumer.settings import Settings
from pipeline.database import describe_target
from pipeline.errors import DatabaseFailure, FailureClass
from pipeline.target import Target

log = logging.getLogger("microbatch")
EXIT_GAVE_UP = 4
FIRST_DELAY_S, MAX_DELAY_S = 1.0, 15.0
REPEAT_LOG_S = 60.0  # the same reason to wait is logged again after this long
# Broker answers that mean the consumer's credentials or certificates are wrong, not that it is down.
KAFKA_REFUSALS = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    }
)


class StartupGaveUp(Exception):
    """The services stayed unavailable for startup_timeout_s; str() says which and why."""


def database_wait(settings: Settings, target: Target) -> str | None:
    """None when PostgreSQL answers and its tables match the pipeline; otherwise what to wait for.

    Raises StartupError for what waiting cannot mend (a refused login, a contradicting table).
    """
    try:
        mismatches = target.verify_tables()
    except DatabaseFailure as error:
        if error.failure is FailureClass.TRANSIENT:
            return f"PostgreSQL at {describe_target(settings.database_url.get_secret_value())} ({error})"
        raise database_error(settings, error) from None
    if not mismatches:
        return None
    listing = "\n".join(f"  - {m}" for m in mismatches)
    if all(m.init_db_mends for m in mismatches):  # an init-db job may be running right now
        return f"the tables of pipeline {target.spec.name!r}: " + "; ".join(str(m) for m in mismatches)
    raise StartupError(
        f"the database does not match pipeline {target.spec.name!r}:\n{listing}\n"
        "Run `microbatch init-db` to create missing tables (it never alters or drops existing ones)."
    )


def kafka_wait(
    settings: Settings,
    dead_letter_topic: str | None,
    *,
    make_admin: Callable[[dict[str, Any]], AdminClient] = AdminClient,
) -> tuple[AdminClient | None, str | None]:
    """(an admin client, None) once a broker answers and the dead-letter topic exists (created here
    when missing); (None, what to wait for) otherwise. Raises StartupError when the broker refuses
    the consumer's credentials or certificate, or refuses to create the dead-letter topic."""
    refusals: list[KafkaError] = []
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        **security_config(settings),
        "logger": quiet_logger(),
        "error_cb": refusals.append,
    }
    admin = made(make_admin, config)
    servers = settings.kafka_bootstrap_servers
    try:
        topics = admin.list_topics(timeout=KAFKA_REQUEST_TIMEOUT_S).topics
        if dead_letter_topic and dead_letter_topic not in topics:
            _create(admin, dead_letter_topic)
    except KafkaException as exc:
        admin.poll(0)  # serve error_cb: an authentication failure is reported there, not in `exc`
        error: KafkaError = exc.args[0]
        refused = next((e for e in [error, *refusals] if e.code() in KAFKA_REFUSALS), None)
        if refused is not None:
            raise StartupError(
                f"Kafka at {servers} refused the consumer ({refused.str()}): check security.protocol, sasl.* "
                "and ssl.* in kafka_config, and the consumer's ACLs"
            ) from None
        return None, f"Kafka at {servers} ({error.str()})"
    except TimeoutError:  # an admin request the broker did not answer in time (see _create)
        return None, f"Kafka at {servers} (no answer within {KAFKA_REQUEST_TIMEOUT_S:g} s)"
    return admin, None


# The broker refused the dead-letter topic as asked (broker defaults): waiting will not change that.
CREATE_REFUSALS = frozenset(
    {KafkaError.POLICY_VIOLATION, KafkaError.INVALID_CONFIG, KafkaError.INVALID_REPLICATION_FACTOR}
)


def _create(admin: AdminClient, topic: str) -> None:
    """Create the dead-letter topic with the broker's defaults. Raises KafkaException or TimeoutError
    for what may pass, StartupError for a refusal of the request itself."""
    future = admin.create_topics([NewTopic(topic, num_partitions=-1, replication_factor=-1)])[topic]
    try:
        future.result(timeout=KAFKA_REQUEST_TIMEOUT_S)
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return
        if error.code() in {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED}:
            raise StartupError(
                f"the dead-letter topic {topic} does not exist and Kafka does not allow the consumer to create it "
                f"({error.str()}): create it beforehand, or grant the consumer's principal CREATE on it"
            ) from None
        if error.code() in CREATE_REFUSALS:
            raise StartupError(
                f"cannot create the dead-letter topic {topic} ({error.str()}): create it yourself, with the "
                "settings your cluster requires"
            ) from None
        raise
    log.info("created dead-letter topic %s", topic)


def wait_for_services(
    settings: Settings,
    target: Target,
    health: Health,
    stopping: Callable[[], bool],
    *,
    clock: Callable[[], float] = time.monotonic,
) -> AdminClient | None:
    """Check PostgreSQL, then Kafka, until both are ready; the admin client, or None when a stop was
    requested meanwhile. `health` names what is awaited (readiness) and keeps beating (liveness)."""
    give_up_at = clock() + settings.startup_timeout_s if settings.startup_timeout_s > 0 else None
    delay, logged, logged_at, checks = FIRST_DELAY_S, "", 0.0, 0
    while not stopping():
        checks += 1
        reason = database_wait(settings, target)
        admin = None
        if stopping():
            break
        if reason is None:
            admin, reason = kafka_wait(settings, target.spec.dead_letter_topic)
        if reason is None:
            return admin
        health.waiting_for = reason
        health.beat()  # a check can take a while (connect and metadata timeouts): it is not a stall
        now = clock()
        if reason != logged or now - logged_at >= REPEAT_LOG_S:
            log.warning("waiting for %s; checking again every few seconds", reason)
            logged, logged_at = reason, now
        else:
            log.info("still waiting (check %d); next check in %.0f s", checks, delay)
        if give_up_at is not None and now >= give_up_at:
            limit = f"startup_timeout_s ({settings.startup_timeout_s:g} s)"
            raise StartupGaveUp(f"gave up after {limit} waiting for {reason}")
        until = now + delay if give_up_at is None else min(now + delay, give_up_at)
        while clock() < until and not stopping():
            health.beat()
            time.sleep(0.1)
        delay = min(delay * 2, MAX_DELAY_S)
    return None
