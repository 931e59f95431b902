"""Wiring: settings → pipeline, Kafka clients, reject sink, run loop; and the checks before a start.

Every problem a user can cause (wrong address, missing table, bad config) becomes a `StartupError`
with one actionable line, never a stack trace.
"""

from __future__ import annotations

import logging

from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient

from consumer.deadletter import HaltOnReject
from consumer.kafka_config import consumer_config
from consumer.runner import LoopOptions, Runner
from consumer.settings import Settings
from consumer.window import WindowPolicy
from pipeline.database import SessionSettings, describe_target
from pipeline.errors import FailureClass
from pipeline.service import Pipeline
from pipeline.spec import PipelineSpec
from pipeline.spec_loader import load_pipeline
from pipeline.writer import RejectSink, WriteError

log = logging.getLogger("microbatch")


class StartupError(Exception):
    """The consumer cannot start; str() says what is wrong and what to do."""


def build_pipeline(settings: Settings, spec: PipelineSpec | None = None) -> Pipeline:
    """The database side of the configured pipeline (no connection is opened yet)."""
    spec = spec or load_pipeline(settings.pipeline)
    session = SessionSettings(
        statement_timeout_ms=settings.statement_timeout_ms,
        lock_timeout_ms=settings.lock_timeout_ms,
        idle_in_transaction_ms=settings.idle_in_transaction_timeout_ms,
    )
    return Pipeline(
        spec,
        settings.database_url.get_secret_value(),
        group=settings.group_id,
        offsets_table=settings.offsets_table,
        session=session,
        max_message_bytes=settings.max_message_bytes,
        max_savepoints=settings.max_savepoints,
        max_transactions=settings.max_bisect_transactions,
    )


def database_error(settings: Settings, error: WriteError) -> StartupError:
    """A user-facing message for a database failure at start (no DSN, no password)."""
    target = describe_target(settings.database_url.get_secret_value())
    if error.failure is FailureClass.TRANSIENT or error.sqlstate in {"3D000", "28000", "28P01"}:
        return StartupError(
            f"cannot connect to PostgreSQL at {target}: {error}. "
            "Check that the server is running and that DATABASE_URL (host, port, database, user) is right."
        )
    if error.sqlstate == "42501":
        return StartupError(
            f"PostgreSQL at {target} refused access: {error}. Grant the consumer's role "
            "SELECT, INSERT, UPDATE on the pipeline's tables and the offsets table."
        )
    return StartupError(f"PostgreSQL at {target} failed: {error} (SQLSTATE {error.sqlstate})")


def check_database(settings: Settings, pipeline: Pipeline) -> None:
    """Raise StartupError unless the database is reachable and its tables match the pipeline."""
    try:
        mismatches = pipeline.verify_tables()
    except WriteError as error:
        raise database_error(settings, error) from None
    if mismatches:
        listing = "\n".join(f"  - {m}" for m in mismatches)
        raise StartupError(
            f"the database does not match pipeline {pipeline.spec.name!r}:\n{listing}\n"
            "Run `microbatch init-db` to create missing tables (it never alters or drops existing ones)."
        )


def check_kafka(settings: Settings, timeout: float = 10.0) -> AdminClient:
    """Raise StartupError unless a broker answers within `timeout` seconds."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers, **_security(settings)})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise StartupError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers} within {timeout:.0f} s "
            f"({exc.args[0].str()}). Check that the broker is running and KAFKA_BOOTSTRAP_SERVERS is right."
        ) from None
    return admin


def _security(settings: Settings) -> dict[str, str]:
    return {k: v for k, v in settings.kafka_config.items() if k.startswith(("security.", "sasl.", "ssl."))}


def build_runner(settings: Settings, pipeline: Pipeline, sink: RejectSink | None = None) -> Runner:
    """The run loop over a real Kafka consumer for `pipeline`."""
    config = consumer_config(settings, pipeline.group)
    config["logger"] = logging.getLogger("librdkafka")  # type: ignore[assignment]
    kafka = Consumer(config)
    options = LoopOptions(
        topics=pipeline.spec.topics,
        policy=WindowPolicy(settings.max_records, settings.max_bytes, settings.max_wait_s),
        consume_batch=settings.consume_batch,
        auto_offset_reset=settings.auto_offset_reset,
        shutdown_timeout_s=settings.shutdown_timeout_s,
        retry_initial_s=settings.retry_initial_ms / 1000,
        retry_max_s=settings.retry_max_ms / 1000,
    )
    return Runner(kafka, pipeline, sink or HaltOnReject(), options)
