"""Fixtures of the fault-injection suite, and its report: a row per scenario written from the test's
outcome (all phases), when MICROBATCH_CHAOS_REPORT_DIR is set (`make chaos`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.support.chaos import CHAOS_ENV, CONTRACTS, Scenario, Stream, own_pipeline
from tests.support.chaos_report import Report
from tests.support.consumer_process import ConsumerProcess
from tests.support.services import KafkaService

StreamFactory = Callable[..., Stream]
SCENARIO = pytest.StashKey[Scenario]()
FAILED = pytest.StashKey[bool]()
SKIPPED = pytest.StashKey[bool]()
SECONDS = pytest.StashKey[float]()
REPORT = Report()


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Scenario:
    """The figures of this scenario; its name comes from the test's `scenario` marker."""
    name = _scenario_name(request.node)
    assert name is not None, "every chaos test names its scenario with @pytest.mark.scenario(...)"
    found = Scenario(name)
    request.node.stash[SCENARIO] = found
    return found


def _scenario_name(node: pytest.Item) -> str | None:
    """The scenario a test names with its `scenario` marker (formatted with its parameters), or None."""
    marker = node.get_closest_marker("scenario")
    if marker is None:
        return None
    callspec = getattr(node, "callspec", None)
    return str(marker.args[0]).format(**(callspec.params if callspec else {}))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    """One row per scenario, from the outcome of all its phases: failed when any phase failed (a
    fixture's error included, even before the scenario's figures existed: the row then has no
    verdict), skipped when one was skipped, else passed."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    item.stash[FAILED] = item.stash.get(FAILED, False) or report.failed
    item.stash[SKIPPED] = item.stash.get(SKIPPED, False) or report.skipped
    if report.when == "call":
        item.stash[SECONDS] = report.duration
    if report.when != "teardown":
        return
    scenario = item.stash.get(SCENARIO, None)
    if scenario is None and (name := _scenario_name(item)) is not None:
        scenario = Scenario(name)  # it never started: a row all the same, without a verdict
    if scenario is not None:
        result = "failed" if item.stash[FAILED] else "skipped" if item.stash[SKIPPED] else "passed"
        REPORT.add(scenario, result, item.stash.get(SECONDS, 0.0))


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
    scenario: Scenario,
) -> Iterator[StreamFactory]:
    """Prepared streams (tables, topic) of this test's own; servers can be swapped for the test's own, and
    the invoice pipeline for another built-in one that has an event generator (`pipeline`)."""
    made: list[Stream] = []

    def make(
        *, partitions: int = 4, bootstrap: str | None = None, database: str | None = None, pipeline: str = "invoices"
    ) -> Stream:
        pipeline_file = invoice_pipeline if pipeline == "invoices" else own_pipeline(pipeline, unique, tmp_path)
        env = {**service_env, **CHAOS_ENV}
        if bootstrap:
            env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        if database:
            env["DATABASE_URL"] = database
        stream = Stream(
            name=unique, env=env, pipeline=pipeline_file, workdir=tmp_path, bootstrap=bootstrap or kafka.bootstrap,
            database_url=database or database_url, start_consumer=consumer_factory, scenario=scenario,
            partitions=partitions, contract=CONTRACTS[pipeline],
        ).prepare()  # fmt: skip
        made.append(stream)
        return stream

    yield make
    for stream in made:
        stream.close()


@pytest.fixture
def stream(make_stream: StreamFactory) -> Stream:
    return make_stream()
