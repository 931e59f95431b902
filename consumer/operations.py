"""Operator commands: `microbatch status` (where every partition stands) and `microbatch check-config`.

Both only read: nothing is committed, created or altered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.app import (
    StartupError,
    build_target,
    check_database,
    check_kafka,
    database_error,
    quiet_logger,
    security_config,
)
from consumer.kafka_check import check_clients
from consumer.kafka_clients import made
from consumer.kafka_config import check_passthrough
from consumer.settings import ConfigError, Settings, load_settings
from pipeline.errors import DatabaseFailure
from pipeline.prepare import transform_of
from pipeline.spec_loader import PipelineFileError, load_pipeline
from pipeline.target import Target


@dataclass
class PartitionStatus:
    topic: str
    partition: int
    stored_position: int | None
    kafka_committed: int | None
    high_watermark: int
    lag: int


@dataclass
class Status:
    group: str
    partitions: list[PartitionStatus] = field(default_factory=list)
    dead_letter_topic: str | None = None
    dead_letters: int | None = None
    missing_topics: list[str] = field(default_factory=list)  # subscribed, but the broker does not know them

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _watermarks(consumer: Consumer, topic: str) -> dict[int, tuple[int, int]]:
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return {}
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in metadata.partitions}


def collect_status(settings: Settings, target: Target) -> Status:
    """Stored positions (PostgreSQL), Kafka-committed offsets and high watermarks, per partition."""
    try:
        stored = target.all_positions()
    except DatabaseFailure as error:
        raise database_error(settings, error) from None
    probe = made(Consumer, {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": target.group,
                            "enable.auto.commit": False, "logger": quiet_logger(),
                            **security_config(settings)})  # fmt: skip
    try:
        status = Status(group=target.group, dead_letter_topic=target.spec.dead_letter_topic)
        for topic in target.spec.topics:
            marks = _watermarks(probe, topic)
            if not marks:
                status.missing_topics.append(topic)
            committed = {
                tp.partition: tp.offset
                for tp in probe.committed([TopicPartition(topic, p) for p in marks], timeout=10)
            } if marks else {}  # fmt: skip
            for partition, (low, high) in sorted(marks.items()):
                row = stored.get((topic, partition))
                position = None if row is None else row.offset
                kafka = committed.get(partition)
                start = position if position is not None else (kafka if kafka is not None and kafka >= 0 else low)
                status.partitions.append(
                    PartitionStatus(
                        topic,
                        partition,
                        position,
                        kafka if kafka is not None and kafka >= 0 else None,
                        high,
                        max(0, high - start),
                    )
                )
        if status.dead_letter_topic:
            marks = _watermarks(probe, status.dead_letter_topic)
            status.dead_letters = sum(high - low for low, high in marks.values()) if marks else 0
    except KafkaException as exc:
        raise StartupError(
            f"cannot read offsets from Kafka at {settings.kafka_bootstrap_servers}: {exc.args[0].str()}"
        ) from None
    finally:
        probe.close()
    return status


@dataclass
class CheckResult:
    """One line of `check-config`: what was checked, whether it is fine, what to do otherwise."""

    what: str
    ok: bool
    detail: str = ""


def check_config(config_file: Path | None, pipeline_source: str | None) -> list[CheckResult]:
    """Validate the configuration and every connection the consumer needs; never raises for user mistakes."""
    results: list[CheckResult] = []
    try:
        settings = load_settings(config_file, pipeline=pipeline_source)
        check_passthrough(settings.kafka_config)
    except ConfigError as exc:
        return [CheckResult("configuration", False, str(exc))]
    results.append(CheckResult("configuration", True, "all settings valid"))
    try:
        spec = load_pipeline(settings.pipeline)
    except PipelineFileError as exc:
        return [*results, CheckResult("pipeline", False, str(exc))]
    results.append(CheckResult("pipeline", True, f"{spec.name!r}: {len(spec.fields)} fields, "
                                                 f"{1 + len(spec.summaries) + len(spec.lookups)} tables"))  # fmt: skip
    if spec.transform is not None:  # imported as `run` imports it: a hook that does not load stops the consumer
        try:
            transform_of(spec)
            results.append(CheckResult("transform", True, f"{spec.transform} loads"))
        except PipelineFileError as exc:
            results.append(CheckResult("transform", False, str(exc)))
    try:
        check_clients(settings, settings.group_id or spec.group, spec.dead_letter_topic)
        admin = check_kafka(settings)
        results.append(CheckResult("kafka", True, f"broker reachable at {settings.kafka_bootstrap_servers}"))
        results += _check_topics(admin, [*spec.topics], spec.dead_letter_topic)
    except (StartupError, ConfigError) as exc:
        results.append(CheckResult("kafka", False, str(exc)))
    target = build_target(settings, spec)
    try:
        check_database(settings, target)
        results.append(CheckResult("database", True, "reachable; tables and privileges match the pipeline"))
    except StartupError as exc:
        results.append(CheckResult("database", False, str(exc)))
    finally:
        target.close()
    return results


def _check_topics(admin: AdminClient, topics: list[str], dead_letter_topic: str | None) -> list[CheckResult]:
    existing = admin.list_topics(timeout=10).topics
    results = []
    for topic in topics:
        if topic in existing:
            results.append(CheckResult(f"topic {topic}", True, f"{len(existing[topic].partitions)} partitions"))
        else:
            advice = f"topic {topic} does not exist: create it (or produce to it) before starting the consumer"
            results.append(CheckResult(f"topic {topic}", False, advice))
    if dead_letter_topic:
        if dead_letter_topic in existing:
            results.append(CheckResult(f"dead-letter topic {dead_letter_topic}", True, "exists"))
        else:
            results.append(CheckResult(f"dead-letter topic {dead_letter_topic}", True,
                                       "does not exist yet: `microbatch run` creates it"))  # fmt: skip
    return results
