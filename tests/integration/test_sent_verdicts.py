"""A verdict of the database that reached the dead-letter topic stands when the COMMIT after it fails
(pipeline/sent_verdicts.py), against real PostgreSQL: the retry never writes a dead-lettered message."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import orjson
import psycopg
import pytest

from devstack.verify import read_topic
from pipeline import failpoints
from pipeline.errors import DatabaseFailure, FailureClass
from pipeline.prepare import Preparer
from pipeline.records import Batch, Record, Rejection, RejectReason
from pipeline.rejects import RejectSink, RejectSinkError
from pipeline.spec_loader import builtin_dir, load_pipeline
from pipeline.target import Target
from tests.support.consumer_process import ConsumerProcess
from tests.support.lookup_runs import drained, prepare, produce, register, replace_once, topic_of
from tests.support.services import KafkaService, wait_until
from tests.support.vendor_events import LineMaker, transaction_keys, vendor_pipeline

TOPIC = "vendor-invoice-lines"


class CreatingOnDelivery(RejectSink):
    """Keeps what it is given; the first time a letter is delivered, someone registers the vendors the
    letters lacked (a reference row appearing between the dead letter and the COMMIT). With `then_fail`,
    that first delivery then fails as if the topic had taken the letters but answered too late."""

    def __init__(self, database_url: str, *vendors: str, then_fail: bool = False) -> None:
        self.database_url, self.vendors, self.then_fail = database_url, vendors, then_fail
        self.delivered: list[list[Rejection]] = []

    def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
        self.delivered.append(list(rejections))
        if rejections and len(self.delivered) == 1:
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                register(conn, *self.vendors)
            if self.then_fail:
                raise RejectSinkError("the dead-letter topic did not acknowledge in time")


def _records(vendors: Sequence[str], *, start: int = 0, partition: int = 0) -> list[Record]:
    return [
        Record(TOPIC, partition, start + n, None, orjson.dumps({
            "event_id": str(uuid.uuid4()), "invoice_id": f"i-{n}", "vendor": vendor, "sku": f"sku-{n % 3}",
            "quantity": 1 + n % 4, "unit_price": 2.5, "ts": "2026-01-01T00:00:00Z",
        }))
        for n, vendor in enumerate(vendors)
    ]  # fmt: skip


@pytest.fixture
def find_only(database_url: str, tmp_path: Path) -> Iterator[tuple[Target, Preparer]]:
    """The vendor-invoices pipeline whose vendors are found only (unknown ones are dead-lettered)."""
    path = tmp_path / "vendor-invoices.toml"
    path.write_text(replace_once(
        (builtin_dir() / "vendor-invoices.toml").read_text(),
        'id = { column = "vendor_id", type = "bigint" }\ncreate = true',
        'id = { column = "vendor_id", type = "bigint" }\ncreate = false\non_missing = "dead_letter"',
    ))  # fmt: skip
    spec = load_pipeline(path)
    target, preparer = Target(spec, database_url), Preparer(spec, database_url)
    try:
        assert target.init_tables()[1] == []
        yield target, preparer
    finally:
        failpoints.arm("")
        target.close()
        preparer.close()


def _written(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT v.name, count(*) FROM transactions t JOIN vendors v USING (vendor_id) GROUP BY v.name"
        ).fetchall()
    return {str(name): int(count) for name, count in rows}


@pytest.mark.parametrize("max_savepoints", [64, 2])
def test_a_retry_keeps_out_what_a_failed_commit_already_dead_lettered(
    database_url: str, find_only: tuple[Target, Preparer], max_savepoints: int
) -> None:
    target, preparer = find_only
    target.writer.max_savepoints = max_savepoints  # 2: the settled rows span several transactions
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, "acme")
    vendors = ["acme", "globex", "acme", "acme", "globex", "acme", "acme", "globex"]
    window = _records(vendors)
    lacking = {r.offset for r in window if orjson.loads(r.value or b"")["vendor"] == "globex"}
    sink = CreatingOnDelivery(database_url, "globex")

    failpoints.arm("before_commit:raise:08006@1")  # the first COMMIT fails once its letters are out
    with pytest.raises(DatabaseFailure) as failed:
        target.write(Batch(window, {(TOPIC, 0): None}), preparer.prepare(window), sink)
    assert failed.value.failure is FailureClass.TRANSIENT
    letters = sink.delivered[0]
    assert {r.record.offset for r in letters} == lacking
    assert {r.reason for r in letters} == {RejectReason.UNKNOWN_REFERENCE}
    assert _written(database_url) == {}  # rolled back; globex is registered now
    assert len(target.writer.sent) == len(lacking)

    # The consumer retries the window, decoded again. globex exists now, but its events were dead-lettered.
    result = target.write(Batch(window, {(TOPIC, 0): None}), preparer.prepare(window), sink)
    assert {r.record.offset for r in result.rejections} == lacking
    assert {r.reason for r in result.rejections} == {RejectReason.UNKNOWN_REFERENCE}
    assert result.inserted == len(window) - len(lacking)
    assert result.transactions == (1 if max_savepoints == 64 else 2)  # settled rows take no savepoint
    assert _written(database_url) == {"acme": len(window) - len(lacking)}
    assert {r.record.offset for r in sink.delivered[-1]} <= lacking  # sent again at most
    assert {pid: row.offset for pid, row in target.stored_positions([(TOPIC, 0)]).items()} == {(TOPIC, 0): 8}
    assert len(target.writer.sent) == 0  # the COMMIT moved past them: forgotten

    # The next windows judge globex afresh: it is known now.
    later = _records(["globex", "acme"], start=len(window))
    result = target.write(Batch(later, {(TOPIC, 0): 8}), preparer.prepare(later), sink)
    assert (result.inserted, result.rejections) == (2, [])


def test_a_retry_writes_a_reused_coordinate_with_another_value(
    database_url: str, find_only: tuple[Target, Preparer]
) -> None:
    """A verdict belongs to a message, not to its coordinates: a re-created topic reuses offsets."""
    target, preparer = find_only
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, "acme")
    sink = CreatingOnDelivery(database_url, "globex")
    first = _records(["acme", "globex"])
    failpoints.arm("before_commit:raise:08006@1")
    with pytest.raises(DatabaseFailure):
        target.write(Batch(first, {(TOPIC, 0): None}), preparer.prepare(first), sink)
    other = _records(["acme", "globex"])  # same coordinates, other event ids
    result = target.write(Batch(other, {(TOPIC, 0): None}), preparer.prepare(other), sink)
    assert (result.inserted, result.rejections) == (2, [])
    assert _written(database_url) == {"acme": 1, "globex": 1}


def test_a_delivery_that_fails_after_the_topic_took_the_letters_keeps_their_verdicts(
    database_url: str, find_only: tuple[Target, Preparer]
) -> None:
    target, preparer = find_only
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, "acme")
    sink = CreatingOnDelivery(database_url, "globex", then_fail=True)
    window = _records(["acme", "globex", "acme"])
    with pytest.raises(RejectSinkError):
        target.write(Batch(window, {(TOPIC, 0): None}), preparer.prepare(window), sink)
    result = target.write(Batch(window, {(TOPIC, 0): None}), preparer.prepare(window), sink)
    assert [r.record.offset for r in result.rejections] == [1]
    assert _written(database_url) == {"acme": 2}


def test_verdicts_of_two_partitions_kept_out_across_transactions_are_all_forgotten_once_committed(
    database_url: str, find_only: tuple[Target, Preparer]
) -> None:
    """The retry of a window of two partitions takes several transactions of two savepoints each: every
    lettered row stays out, and each COMMIT forgets the verdicts it moved past."""
    target, preparer = find_only
    target.writer.max_savepoints = 2
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, "acme")
    vendors = ["acme", "globex", "acme", "acme", "globex", "acme"]
    window = _records(vendors, partition=0) + _records(vendors, partition=1)
    lacking = {(r.partition, r.offset) for r in window if orjson.loads(r.value or b"")["vendor"] == "globex"}
    sink = CreatingOnDelivery(database_url, "globex")
    pids = {(TOPIC, 0): None, (TOPIC, 1): None}
    failpoints.arm("before_commit:raise:08006@1")
    with pytest.raises(DatabaseFailure):
        target.write(Batch(window, dict(pids)), preparer.prepare(window), sink)
    assert len(target.writer.sent) == len(lacking) == 4
    result = target.write(Batch(window, dict(pids)), preparer.prepare(window), sink)
    assert {(r.record.partition, r.record.offset) for r in result.rejections} == lacking
    assert result.transactions >= 2
    assert len(target.writer.sent) == 0
    with psycopg.connect(database_url) as conn:
        written = {(p, o) for p, o in conn.execute("SELECT kafka_partition, kafka_offset FROM transactions")}
    assert written == {(r.partition, r.offset) for r in window} - lacking


class NotHandedOver(RejectSinkError):
    handed_over = False  # as the circuit breaker refuses: before any letter reaches the producer


def test_verdicts_a_sink_refused_before_handing_any_over_are_judged_again(
    database_url: str, find_only: tuple[Target, Preparer]
) -> None:
    """No letter exists (the breaker refused them all): once the reference rows are loaded, the retry
    writes the events instead of keeping them out for ever."""
    target, preparer = find_only
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, "acme")
    window = _records(["acme", "globex", "acme"])

    class Refusing(RejectSink):
        def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
            if rejections:
                raise NotHandedOver("too much of the input is rejected")

    with pytest.raises(NotHandedOver):
        target.write(Batch(window, {(TOPIC, 0): None}), preparer.prepare(window), Refusing())
    assert len(target.writer.sent) == 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, "globex")
    result = target.write(Batch(window, {(TOPIC, 0): None}), preparer.prepare(window), Refusing())
    assert (result.inserted, result.rejections) == (3, [])


def test_a_one_row_window_keeps_out_the_row_its_bulk_statement_had_rejected(
    database_url: str, find_only: tuple[Target, Preparer]
) -> None:
    """A single row the database refused in the bulk statement is lettered by the next transaction,
    which starts past it; when that COMMIT fails, the retry keeps the row out even though the
    constraint was relaxed meanwhile."""
    target, preparer = find_only
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, "acme")
        conn.execute("ALTER TABLE transactions ADD CONSTRAINT quantity_below_three CHECK (quantity < 3)")

    class Relaxing(RejectSink):
        def __init__(self) -> None:
            self.delivered: list[list[Rejection]] = []

        def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
            self.delivered.append(list(rejections))
            if rejections and len(self.delivered) == 1:
                with psycopg.connect(database_url, autocommit=True) as conn:
                    conn.execute("ALTER TABLE transactions DROP CONSTRAINT quantity_below_three")

    window = _records(["acme", "acme", "acme"])[2:]  # quantity 3
    sink = Relaxing()
    failpoints.arm("before_commit:raise:08006@1")
    with pytest.raises(DatabaseFailure):
        target.write(Batch(window, {(TOPIC, 0): None}), preparer.prepare(window), sink)
    assert [(r.reason, r.sqlstate) for r in sink.delivered[0]] == [(RejectReason.DB_REJECTED, "23514")]
    result = target.write(Batch(window, {(TOPIC, 0): None}), preparer.prepare(window), sink)
    assert (result.inserted, [r.record.offset for r in result.rejections]) == (0, [2])
    assert result.rejections[0].record is window[0]  # about this write's own record
    assert _written(database_url) == {}


def test_a_consumer_never_both_writes_and_dead_letters_across_a_failed_commit(
    kafka: KafkaService, database_url: str, service_env: dict[str, str],
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    """End to end, `microbatch run` against real Kafka and PostgreSQL: the first window's letters for an
    unknown vendor are produced, the vendor is registered while the consumer waits on them (a
    failpoint), and that window's COMMIT fails. Every event ends up in exactly one place."""
    pipeline = vendor_pipeline(tmp_path, unique)
    pipeline.write_text(replace_once(
        pipeline.read_text(),
        'id = { column = "vendor_id", type = "bigint" }\ncreate = true',
        'id = { column = "vendor_id", type = "bigint" }\ncreate = false\non_missing = "dead_letter"',
    ))  # fmt: skip
    prepare(service_env, pipeline, kafka, unique, partitions=1)
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, "acme")
    maker = LineMaker(seed=401)
    lines = [maker.line("acme" if n % 2 else "globex", f"sku-{n % 7}") for n in range(400)]  # every window has both
    produce(kafka, unique, lines, [0] * len(lines))
    faults = "after_dlq_produce:sleep:6000@1,before_commit:raise:08006@1"
    consumer = consumer_factory({**service_env, "MICROBATCH_FAILPOINTS": faults}, pipeline)
    wait_until(lambda: "failpoint after_dlq_produce: sleep" in consumer.output(), timeout=60,
               what="the first window's letters to be produced")  # fmt: skip
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, "globex")  # while the window that lettered globex's events is still open
    wait_until(drained(kafka, database_url, unique, partitions=1), timeout=90, what="the consumer to catch up")
    later = [maker.line("acme" if n % 2 else "globex", f"sku-{n % 7}") for n in range(40)]  # globex is known now
    produce(kafka, unique, later, [0] * len(later))
    wait_until(drained(kafka, database_url, unique, partitions=1), timeout=90, what="the later events")
    assert consumer.terminate() == 0, consumer.output()[-3000:]
    assert "failpoint before_commit: raise" in consumer.output()

    lettered = {
        orjson.loads(d.value or b"")["event_id"] for d in read_topic(kafka.bootstrap, f"{topic_of(unique)}.dlq")
    }
    written = set(transaction_keys(database_url))
    assert lettered, "the first window dead-lettered globex's events"
    assert {line.event_id for line in lines if line.event_id in lettered} <= {
        line.event_id for line in lines if line.vendor == "globex"
    }
    assert not lettered & written  # never both
    assert lettered | written == {line.event_id for line in lines + later}  # never neither
    assert {line.event_id for line in later} <= written
