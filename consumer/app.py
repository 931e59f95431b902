"""Wiring: settings → pipeline, Kafka clients, reject sink, run loop; and the checks before a start.

Every problem a user can cause (wrong address, missing table, bad config) becomes a `StartupError`
with one actionable line, never a stack trace.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, libversion
from confluent_kafka.admin import AdminClient

from consumer import __version__
from consumer.breaker import BreakerPolicy, DeadLetterBreaker
from consumer.deadletter import DeadLetterProducer
from consumer.dlq_limits import SizeLimit, producer_max_bytes, topic_max_bytes
from consumer.kafka_clients import made
from consumer.kafka_config import consumer_config, dead_letter_producer_config, reconnects
from consumer.loop import LoopOptions, RunLoop
from consumer.metrics import Metrics
from consumer.placement import Rules
from consumer.reject_sinks import GuardedSink, HaltOnReject
from consumer.settings import Settings
from consumer.telemetry import Telemetry
from consumer.window import LIMITS, WindowPolicy
from pipeline.database import SessionSettings, describe_target
from pipeline.errors import DatabaseFailure, FailureClass
from pipeline.prepare import Preparer
from pipeline.rejects import RejectSink
from pipeline.spec import PipelineSpec
from pipeline.spec_loader import load_pipeline
from pipeline.target import Target

log = logging.getLogger("microbatch")
KAFKA_REQUEST_TIMEOUT_S = 10.0  # one metadata request or admin call to the broker


class StartupError(Exception):
    """The consumer cannot start; str() says what is wrong and what to do."""


def build_target(settings: Settings, spec: PipelineSpec | None = None) -> Target:
    """The database side of the configured pipeline (no connection is opened yet)."""
    spec = spec or load_pipeline(settings.pipeline)
    session = SessionSettings(
        keepalive_idle_s=settings.db_keepalive_idle_s,
        tcp_user_timeout_ms=settings.db_tcp_user_timeout_ms,
        statement_timeout_ms=settings.statement_timeout_ms,
        lock_timeout_ms=settings.lock_timeout_ms,
        idle_in_transaction_ms=settings.idle_in_transaction_timeout_ms,
    )
    return Target(
        spec,
        settings.database_url.get_secret_value(),
        group=settings.group_id,
        offsets_table=settings.offsets_table,
        session=session,
        max_savepoints=settings.max_savepoints,
        max_transactions=settings.max_bisect_transactions,
        lookup_cache_keys=settings.lookup_cache_keys,
        synchronous_commit=settings.durability == "fsync",
    )


def build_preparer(settings: Settings, target: Target) -> Preparer:
    """The loop thread's half of the pipeline: decode, validate, encode (its encoder borrows adapters
    from a connection of its own to the same database)."""
    return Preparer(target.spec, settings.database_url.get_secret_value(), max_message_bytes=settings.max_message_bytes)


def database_error(settings: Settings, error: DatabaseFailure) -> StartupError:
    """A user-facing message for a database failure at start (no DSN, no password)."""
    target = describe_target(settings.database_url.get_secret_value())
    if error.sqlstate in {"28000", "28P01"}:
        return StartupError(
            f"PostgreSQL at {target} refused the login: {error}. Check the user and password in DATABASE_URL "
            "(or the server's pg_hba.conf)."
        )
    if error.failure is FailureClass.TRANSIENT or error.sqlstate == "3D000":
        return StartupError(
            f"cannot connect to PostgreSQL at {target}: {error}. "
            "Check that the server is running and that DATABASE_URL (host, port, database, user) is right."
        )
    if error.sqlstate == "42501":
        return StartupError(
            f"PostgreSQL at {target} refused access: {error}. The consumer's role gets what it needs from "
            "`microbatch init-db --grant-to ROLE`, run as the tables' owner (which needs CREATE on the schema, "
            "and on the database when the schema does not exist yet)."
        )
    return StartupError(f"PostgreSQL at {target} failed: {error} (SQLSTATE {error.sqlstate})")


def check_database(settings: Settings, target: Target) -> None:
    """Raise StartupError unless the database is reachable and its tables match the pipeline."""
    try:
        mismatches = target.verify_tables()
    except DatabaseFailure as error:
        raise database_error(settings, error) from None
    if mismatches:
        listing = "\n".join(f"  - {m}" for m in mismatches)
        raise StartupError(
            f"the database does not match pipeline {target.spec.name!r}:\n{listing}\n"
            "Run `microbatch init-db` to create missing tables (it never alters or drops existing ones)."
        )


def check_kafka(settings: Settings, timeout: float = KAFKA_REQUEST_TIMEOUT_S) -> AdminClient:
    """Raise StartupError unless a broker answers within `timeout` seconds."""
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap_servers, **security_config(settings)}
    # A metadata request naming a topic (`positions reset --topic`) must not create it on a broker
    # with auto.create.topics.enable (Kafka's default): an admin client asks for that unless told not to.
    config.update(logger=quiet_logger(), **{"allow.auto.create.topics": False})
    admin = made(AdminClient, config)
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise StartupError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers} within {timeout:.0f} s "
            f"({exc.args[0].str()}). Check that the broker is running and KAFKA_BOOTSTRAP_SERVERS is right."
        ) from None
    return admin


def quiet_logger() -> logging.Logger:
    """For probes: librdkafka's connection errors would repeat what our own message says."""
    logger = logging.getLogger("microbatch.probe")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def security_config(settings: Settings) -> dict[str, str]:
    """The security.*, sasl.* and ssl.* entries of kafka_config: what every client of ours needs."""
    return {k: v for k, v in settings.kafka_config.items() if k.startswith(("security.", "sasl.", "ssl."))}


def lasting_admin(settings: Settings, logger: logging.Logger) -> AdminClient:
    """An admin client that lives as long as the consumer: kafka_config's security settings, and the
    reconnect settings of the consumer and producers (consumer/kafka_config.py: RECONNECTS)."""
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap_servers, **reconnects(settings)}
    config.update(security_config(settings), logger=logger, **{"allow.auto.create.topics": False})  # as check_kafka
    return made(AdminClient, config)


def build_sink(settings: Settings, target: Target, metrics: Metrics) -> RejectSink:
    """The dead-letter producer behind the circuit breaker, or HaltOnReject without a topic."""
    topic = target.spec.dead_letter_topic
    breaker = DeadLetterBreaker(
        BreakerPolicy(
            max_ratio=settings.breaker_max_ratio,
            window=settings.breaker_window,
            min_records=settings.breaker_min_records,
            max_consecutive=settings.breaker_max_consecutive,
        )
    )
    if topic is None:
        return GuardedSink(HaltOnReject(), breaker)
    # The topic's max.message.bytes, read once here (and again when a letter is refused as too large):
    # a letter over it, or over the producer's message.max.bytes, is sent without its value.
    admin = lasting_admin(settings, quiet_logger())
    topic_bytes = topic_max_bytes(admin, topic, KAFKA_REQUEST_TIMEOUT_S)
    limit = SizeLimit(
        producer_max_bytes(dead_letter_producer_config(settings, topic_bytes)),
        lambda timeout: topic_max_bytes(admin, topic, timeout),
        topic_bytes,
    )

    def producer_settings(topic_bytes: int | None) -> dict[str, Any]:
        return {**dead_letter_producer_config(settings, topic_bytes), "logger": logging.getLogger("librdkafka")}

    producer = DeadLetterProducer(
        made(Producer, producer_settings(topic_bytes)),
        topic,
        target.group,
        timeout_s=settings.dead_letter_timeout_s,
        limit=limit,
        # Settings librdkafka accepted at start: a refusal now is not a configuration error.
        renew=lambda topic_bytes: Producer(producer_settings(topic_bytes)),
        on_delivered=lambda rejection: metrics.dead_letters.labels(rejection.reason.value).inc(),
    )
    return GuardedSink(producer, breaker)


def describe(metrics: Metrics, target: Target) -> None:
    """The series that name this consumer (build info, its tables and topics): set before start-up
    waits for the services, so that a consumer stuck there is visible too (idempotent)."""
    spec = target.spec
    metrics.tables([spec.raw.table, *(s.table for s in spec.summaries)])
    metrics.topics(spec.topics)
    metrics.build_info.info(
        {"version": __version__, "librdkafka": libversion()[0], "confluent_kafka": metadata.version("confluent-kafka"),
         "psycopg": target.driver_version(), "pipeline": spec.name}
    )  # fmt: skip


def build_loop(settings: Settings, target: Target, telemetry: Telemetry, sink: RejectSink | None = None) -> RunLoop:
    """The run loop over a real Kafka consumer for the pipeline of `target`."""
    config = consumer_config(settings, target.group)
    config["logger"] = logging.getLogger("librdkafka")  # type: ignore[assignment]
    kafka = made(Consumer, config)
    options = LoopOptions(
        topics=target.spec.topics,
        group=target.group,
        policy=WindowPolicy(**{limit.setting: getattr(settings, limit.setting) for limit in LIMITS}),
        consume_batch=settings.consume_batch,
        placement=Rules(
            auto_offset_reset=settings.auto_offset_reset,
            on_position_gap=settings.on_position_gap,
            adopt_kafka_offsets=settings.adopt_kafka_offsets,
            coordinates_need_topic_id=target.spec.coordinates_need_topic_id(),
            needs_topic_id=any(column.kafka == "topic_id" for column in target.spec.raw.columns.values()),
            # Offsets a truncated log reuses would be taken for duplicates of the rows of the lost messages.
            dedupes_by_offset=any(
                target.spec.raw.columns[name].kafka == "offset" for name in target.spec.raw.dedupe_key
            ),
        ),
        shutdown_timeout_s=settings.shutdown_timeout_s,
        retry_initial_s=settings.retry_initial_ms / 1000,
        retry_max_s=settings.retry_max_ms / 1000,
        halted_retry_s=settings.halted_retry_s,
        exit_on_halt=settings.exit_on_halt,
        overlap_writes=settings.overlap_writes,
    )
    describe(telemetry.metrics, target)
    sink = sink or build_sink(settings, target, telemetry.metrics)
    admin = lasting_admin(settings, logging.getLogger("librdkafka"))
    return RunLoop(kafka, build_preparer(settings, target), target, sink, options, admin=admin, telemetry=telemetry)
