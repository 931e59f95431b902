"""Fixtures of the fault-injection suite; the report is written when MICROBATCH_CHAOS_REPORT_DIR is set."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.chaos import CHAOS_ENV, REPORT, Stream
from tests.support.consumer_process import ConsumerProcess
from tests.support.services import KafkaService

StreamFactory = Callable[..., Stream]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    directory = os.environ.get("MICROBATCH_CHAOS_REPORT_DIR")
    if directory and REPORT.rows:
        REPORT.write(Path(directory))


@pytest.fixture
def make_stream(
    kafka: KafkaService,
    database_url: str,
    service_env: dict[str, str],
    invoice_pipeline: Path,
    consumer_factory: Callable[..., ConsumerProcess],
    unique: str,
    tmp_path: Path,
) -> Iterator[StreamFactory]:
    """Prepared streams (tables, topic) of this test's own; servers can be swapped for the test's own."""
    made: list[Stream] = []

    def make(*, partitions: int = 4, bootstrap: str | None = None, database: str | None = None) -> Stream:
        env = {**service_env, **CHAOS_ENV}
        if bootstrap:
            env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        if database:
            env["DATABASE_URL"] = database
        stream = Stream(
            name=unique, env=env, pipeline=invoice_pipeline, workdir=tmp_path, bootstrap=bootstrap or kafka.bootstrap,
            database_url=database or database_url, start_consumer=consumer_factory, partitions=partitions,
        ).prepare()  # fmt: skip
        made.append(stream)
        return stream

    yield make
    for stream in made:
        stream.close()


@pytest.fixture
def stream(make_stream: StreamFactory) -> Stream:
    return make_stream()
