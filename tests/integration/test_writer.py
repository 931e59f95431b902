"""The one-transaction writer against real PostgreSQL, without Kafka: every path of `BatchWriter.write`."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import psycopg
import pytest

from consumer.window import Trigger
from consumer.workload import InvoiceWorkload, WorkloadOptions
from consumer.writer_thread import WriterThread
from pipeline.decode import DecodedBatch
from pipeline.flush_result import FlushResult
from pipeline.offsets import PositionConflict
from pipeline.prepare import Preparer
from pipeline.records import Batch, PartitionId, Record, Rejection, RejectReason
from pipeline.rejects import RejectSink
from pipeline.spec_loader import builtin_dir, load_pipeline
from pipeline.target import Target
from tests.support.services import microbatch_waits, wait_until

TOPIC = "invoice-lines"


class Collecting(RejectSink):
    """A reject sink that keeps what it is given (as the dead-letter producer would send it)."""

    def __init__(self) -> None:
        self.delivered: list[Rejection] = []
        self.calls = 0

    def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
        self.calls += 1
        self.delivered.extend(rejections)


class Pipeline:
    """The two halves of a pipeline as the run loop uses them: the preparer and the target."""

    def __init__(self, database_url: str, *, max_savepoints: int, max_transactions: int) -> None:
        self.target = Target(
            load_pipeline(), database_url, max_savepoints=max_savepoints, max_transactions=max_transactions
        )
        self.preparer = Preparer(self.target.spec, database_url)

    def decode(self, records: Sequence[Record]) -> DecodedBatch:
        return self.preparer.decode(records)

    def prepare(self, records: Sequence[Record]) -> DecodedBatch:
        return self.preparer.prepare(records)

    def write(
        self, batch: Batch, sink: RejectSink, *, decoded: DecodedBatch | None = None, **callbacks: object
    ) -> FlushResult:
        return self.target.write(batch, decoded or self.decode(batch.records), sink, **callbacks)  # type: ignore[arg-type]

    def stored_positions(self, pids: Sequence[PartitionId]) -> dict[PartitionId, int]:
        return {pid: row.offset for pid, row in self.target.stored_positions(pids).items()}

    def close(self) -> None:
        self.target.close()
        self.preparer.close()


@pytest.fixture
def pipeline(database_url: str) -> Iterator[Pipeline]:
    p = Pipeline(database_url, max_savepoints=64, max_transactions=8)
    created, mismatches = p.target.init_tables()
    assert mismatches == [] and "transactions" in created
    yield p
    p.close()


def records(count: int, seed: int, partition: int = 0, start: int = 0) -> list[Record]:
    workload = InvoiceWorkload(WorkloadOptions(count=count, seed=seed, items=20))
    return [Record(TOPIC, partition, start + n, m.key, m.value) for n, m in enumerate(workload.messages())]


def count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def test_duplicates_in_a_batch_and_across_batches_are_written_and_counted_once(
    pipeline: Pipeline, database_url: str
) -> None:
    first = records(100, seed=1)
    replayed = [Record(TOPIC, 0, 100 + n, r.key, r.value) for n, r in enumerate(first[:10])]  # same events again
    sink = Collecting()
    result = pipeline.write(Batch(first + replayed, {(TOPIC, 0): None}), sink)
    assert (result.inserted, result.duplicates) == (100, 10)
    assert result.stored_positions == {(TOPIC, 0): 110}
    again = [Record(TOPIC, 0, 110 + n, r.key, r.value) for n, r in enumerate(first[:50])]
    result = pipeline.write(Batch(again, {(TOPIC, 0): 110}), sink)
    assert (result.inserted, result.duplicates) == (0, 50)
    assert count(database_url, "SELECT count(*) FROM transactions") == 100
    expected_quantity = sum(orjson.loads(r.value or b"")["quantity"] for r in first)
    assert count(database_url, "SELECT sum(quantity) FROM inventory") == expected_quantity
    assert count(database_url, "SELECT sum(lines) FROM item_sales_daily") == 100
    assert sink.delivered == []


def test_a_stale_expected_position_writes_nothing(pipeline: Pipeline, database_url: str) -> None:
    pipeline.write(Batch(records(10, seed=2), {(TOPIC, 0): None}), Collecting())
    with pytest.raises(PositionConflict) as conflict:
        pipeline.write(Batch(records(10, seed=3, start=10), {(TOPIC, 0): 5}), Collecting())
    assert conflict.value.partitions == [(TOPIC, 0)]
    assert count(database_url, "SELECT count(*) FROM transactions") == 10
    assert pipeline.stored_positions([(TOPIC, 0)]) == {(TOPIC, 0): 10}


def test_savepoint_cap_commits_prefixes_then_continues_in_slices_of_max_savepoints_rows(database_url: str) -> None:
    small = Pipeline(database_url, max_savepoints=4, max_transactions=3)
    small.target.init_tables()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions ADD CONSTRAINT q CHECK (quantity <> 7)")
    batch = records(300, seed=4, partition=0) + records(200, seed=5, partition=1)
    bad = [r for r in batch if orjson.loads(r.value or b"")["quantity"] == 7]
    assert len(bad) >= 8, "the seed must give several rejected rows"
    commits: list[dict[PartitionId, int]] = []
    sink = Collecting()
    result = small.write(Batch(batch, {(TOPIC, 0): None, (TOPIC, 1): None}), sink, on_commit=commits.append)
    small.close()
    assert sorted((r.record.partition, r.record.offset) for r in sink.delivered) == sorted(
        (r.partition, r.offset) for r in bad
    )
    assert {r.sqlstate for r in sink.delivered} == {"23514"}
    assert result.transactions > 3, "past the cap, the flush continued in more transactions"
    # Past 3 transactions, slices of 4 rows: one transaction per slice, plus about one per bad row (a
    # bad row can use up a slice's 4 savepoints and leave rows for the next transaction): a bound for
    # this seed's data. One message per transaction, as this writer once did, took 492 here.
    most = 3 + math.ceil(len(batch) / 4) + len(bad)
    assert result.transactions <= most, (result.transactions, most)
    assert len(commits) == result.transactions
    merged: dict[PartitionId, int] = {}
    for commit in commits:
        for pid, position in commit.items():
            assert position >= merged.get(pid, 0), "positions only move forward"
            merged[pid] = position
    assert merged == {(TOPIC, 0): 300, (TOPIC, 1): 200}
    assert result.stored_positions == merged
    assert count(database_url, "SELECT count(*) FROM transactions") == len(batch) - len(bad)
    assert count(database_url, "SELECT sum(lines) FROM item_sales_daily") == len(batch) - len(bad)


def test_a_row_the_database_cannot_even_copy_is_isolated_at_copy_time(pipeline: Pipeline, database_url: str) -> None:
    batch = records(20, seed=6)
    decoded = pipeline.decode(batch)
    # A value no validator would let through: text in an integer column breaks the COPY itself.
    row = list(decoded.rows[13])
    row[5] = "not an integer"
    decoded.rows[13] = tuple(row)
    sink = Collecting()
    result = pipeline.write(Batch(batch, {(TOPIC, 0): None}), sink, decoded=decoded)
    assert [(r.reason, r.sqlstate, r.record.offset) for r in sink.delivered] == [
        (RejectReason.DB_REJECTED, "22000", 13)
    ]
    assert "cannot be encoded" in sink.delivered[0].message
    assert "not an integer" not in sink.delivered[0].message, "row values never reach the dead-letter headers"
    assert result.inserted == 19
    assert pipeline.stored_positions([(TOPIC, 0)]) == {(TOPIC, 0): 20}


def test_copy_data_encoded_ahead_writes_what_row_by_row_encoding_writes(pipeline: Pipeline, database_url: str) -> None:
    table = "SELECT event_id, invoice_id, user_id, item_id, quantity, unit_price, occurred_at FROM transactions"
    batch = records(200, seed=8)
    prepared = pipeline.prepare(batch)
    assert prepared.copy_data is not None and prepared.copy_data.startswith(b"PGCOPY\n\xff\r\n\0")
    pipeline.write(Batch(batch, {(TOPIC, 0): None}), Collecting(), decoded=prepared)
    with psycopg.connect(database_url) as conn:
        ahead = conn.execute(table + " ORDER BY event_id").fetchall()
        conn.execute("TRUNCATE transactions, inventory, item_sales_daily, microbatch_offsets")
    row_by_row = pipeline.decode(batch)
    assert row_by_row.copy_data is None
    pipeline.write(Batch(batch, {(TOPIC, 0): None}), Collecting(), decoded=row_by_row)
    with psycopg.connect(database_url) as conn:
        assert conn.execute(table + " ORDER BY event_id").fetchall() == ahead
    assert len(ahead) == len(prepared.rows)


def test_a_value_that_cannot_be_encoded_ahead_is_left_to_the_writer_to_isolate(
    pipeline: Pipeline, database_url: str
) -> None:
    batch = records(20, seed=9)
    decoded = pipeline.decode(batch)
    row = list(decoded.rows[4])
    row[5] = "not an integer"
    decoded.rows[4] = tuple(row)
    assert pipeline.preparer.encoder is not None
    decoded.copy_data = pipeline.preparer.encoder.encode(decoded.rows)
    assert decoded.copy_data is None, "nothing is decided while encoding ahead"
    sink = Collecting()
    result = pipeline.write(Batch(batch, {(TOPIC, 0): None}), sink, decoded=decoded)
    assert [(r.reason, r.record.offset) for r in sink.delivered] == [(RejectReason.DB_REJECTED, 4)]
    assert result.inserted == 19


def test_a_batch_of_only_invalid_messages_still_moves_the_position(pipeline: Pipeline, database_url: str) -> None:
    batch = [Record(TOPIC, 2, n, None, b"{broken") for n in range(5)]
    sink = Collecting()
    result = pipeline.write(Batch(batch, {(TOPIC, 2): None}), sink)
    assert len(sink.delivered) == 5 and result.inserted == 0
    assert pipeline.stored_positions([(TOPIC, 2)]) == {(TOPIC, 2): 5}


def test_decoding_rejections_are_sent_ahead_during_the_copy_and_delivered_before_the_commit(
    pipeline: Pipeline, database_url: str
) -> None:
    class Ordered(Collecting):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[tuple[str, list[int], int]] = []

        def send_ahead(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
            active = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'COPY %'"
            copying = count(database_url, active)
            self.events.append(("ahead", [r.record.offset for r in rejections], copying))

        def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
            self.events.append(("deliver", [r.record.offset for r in rejections], len(resolved)))
            super().deliver(rejections, resolved)

    batch = [*records(10, seed=23), Record(TOPIC, 0, 10, None, b"{broken"), Record(TOPIC, 0, 11, None, b"")]
    sink = Ordered()
    result = pipeline.write(Batch(batch, {(TOPIC, 0): None}), sink, decoded=pipeline.prepare(batch))
    # Ahead while the writer's COPY is in progress; then the same ones delivered, before the COMMIT.
    assert sink.events == [("ahead", [10, 11], 1), ("deliver", [10, 11], 12)]
    assert result.inserted == 10 and pipeline.stored_positions([(TOPIC, 0)]) == {(TOPIC, 0): 12}


def test_a_refusing_sink_rolls_everything_back(pipeline: Pipeline, database_url: str) -> None:
    from pipeline.rejects import RejectSinkError

    class Refusing(RejectSink):
        def deliver(self, rejections: Sequence[Rejection], resolved: Sequence[Record]) -> None:
            if rejections:
                raise RejectSinkError("dead-letter topic down")

    batch = [*records(10, seed=7), Record(TOPIC, 0, 10, None, b"")]
    with pytest.raises(RejectSinkError):
        pipeline.write(Batch(batch, {(TOPIC, 0): None}), Refusing())
    assert count(database_url, "SELECT count(*) FROM transactions") == 0
    assert pipeline.stored_positions([(TOPIC, 0)]) == {}


def test_a_clean_batch_takes_no_savepoint_and_one_bad_row_is_bisected_in_a_second_transaction(
    pipeline: Pipeline, database_url: str
) -> None:
    clean = records(200, seed=11)
    statements: list[int] = []
    result = pipeline.write(Batch(clean, {(TOPIC, 0): None}), Collecting(), on_statement=lambda: statements.append(1))
    assert (result.savepoints, result.statements, result.transactions, result.bisected) == (0, 1, 1, False)
    assert statements == [1], "on_statement is called once, before the statement"
    with psycopg.connect(database_url, autocommit=True) as conn:
        # NOT VALID: the clean batch's rows stay; only new rows are checked.
        conn.execute("ALTER TABLE transactions ADD CONSTRAINT q CHECK (quantity <> 7) NOT VALID")
    batch = records(300, seed=12, start=200)
    bad = [r.offset for r in batch if orjson.loads(r.value or b"")["quantity"] == 7]
    assert len(bad) >= 2, "the seed must give rejected rows"
    sink = Collecting()
    statements.clear()
    commits: list[dict[PartitionId, int]] = []
    result = pipeline.write(
        Batch(batch, {(TOPIC, 0): 200}), sink, on_commit=commits.append, on_statement=lambda: statements.append(1)
    )
    assert result.bisected and result.savepoints > 0
    assert result.transactions == len(commits), "the failed first attempt rolled back and is not counted"
    assert statements == [1], "on_statement is called once per write, bisection or not"
    assert sorted(r.record.offset for r in sink.delivered) == bad
    assert {r.sqlstate for r in sink.delivered} == {"23514"}
    assert pipeline.stored_positions([(TOPIC, 0)]) == {(TOPIC, 0): 500}
    assert count(database_url, "SELECT count(*) FROM transactions") == 500 - len(bad)
    assert count(database_url, "SELECT sum(lines) FROM item_sales_daily") == 500 - len(bad)


def test_a_single_bad_message_is_rejected_after_its_first_attempt_rolls_back(
    pipeline: Pipeline, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions ADD CONSTRAINT q CHECK (quantity <> 7)")
    lone = next(r for r in records(100, seed=13) if orjson.loads(r.value or b"")["quantity"] == 7)
    lone = Record(TOPIC, 2, 41, lone.key, lone.value)
    sink = Collecting()
    result = pipeline.write(Batch([lone], {(TOPIC, 2): None}), sink)
    assert [(r.record.offset, r.sqlstate) for r in sink.delivered] == [(41, "23514")]
    assert (result.inserted, result.transactions, result.bisected) == (0, 1, True)
    assert pipeline.stored_positions([(TOPIC, 2)]) == {(TOPIC, 2): 42}
    assert count(database_url, "SELECT count(*) FROM transactions") == 0


def test_the_writer_thread_signals_the_hand_over_before_the_statement_ends(
    pipeline: Pipeline, database_url: str
) -> None:
    first = records(50, seed=14)
    pipeline.write(Batch(first, {(TOPIC, 0): None}), Collecting())
    writer = WriterThread(pipeline.target, Collecting())
    with psycopg.connect(database_url) as blocker:
        # Hold every summary row: the statement of the next write is sent, then waits for these locks.
        blocker.execute("SELECT * FROM inventory FOR UPDATE").fetchall()
        second = records(50, seed=15, start=50)
        writer.submit(Batch(second, {(TOPIC, 0): 50}), pipeline.decode(second), Trigger.RECORDS)
        started = time.monotonic()
        writer.wait_for_handover(10.0)
        assert time.monotonic() - started < 10.0, "the hand-over was signalled, not timed out"
        assert not writer.finished, "the statement is still waiting for the locks"
        # What the write waits for is these locks: its statement reached PostgreSQL and waits there.
        wait_until(lambda: microbatch_waits(database_url), timeout=10, what="the statement to wait for the locks")
        assert not writer.finished
        blocker.rollback()
    outcome = writer.wait()
    writer.close()
    assert outcome is not None and outcome.error is None and outcome.result is not None
    assert outcome.result.inserted == 50
    assert writer.commits() == [{(TOPIC, 0): 100}]
    assert pipeline.stored_positions([(TOPIC, 0)]) == {(TOPIC, 0): 100}


@pytest.mark.parametrize(("synchronous_commit", "inside"), [(True, "on"), (False, "off")])
def test_durability_replay_turns_synchronous_commit_off_for_the_flush_transaction_only(
    database_url: str, synchronous_commit: bool, inside: str
) -> None:
    # The session's own default is on (the test server's is off), so what the writer sets is what shows.
    url = psycopg.conninfo.make_conninfo(database_url, options="-c synchronous_commit=on")
    target = Target(load_pipeline(), url, synchronous_commit=synchronous_commit)
    preparer = Preparer(target.spec, url)
    try:
        target.init_tables()
        seen: list[str] = []

        def show() -> None:
            row = target.database.connection().execute("SHOW synchronous_commit").fetchone()
            seen.append(str(row[0]) if row else "?")

        batch = records(30, seed=16, partition=1)
        result = target.write(Batch(batch, {(TOPIC, 1): None}), preparer.decode(batch), Collecting(), on_statement=show)
        assert result.inserted + result.duplicates == len(batch) - len(result.rejections)
        assert seen == [inside], "inside the flush transaction"
        after = target.database.connection().execute("SHOW synchronous_commit").fetchone()
        assert after == ("on",), "SET LOCAL: the session's setting is back once the transaction ended"
        assert target.stored_positions([(TOPIC, 1)])[(TOPIC, 1)].offset == 30
    finally:
        target.close()
        preparer.close()


def test_each_partition_is_stamped_and_stored_with_the_incarnation_it_was_read_from(
    database_url: str, tmp_path: Path
) -> None:
    # A topic re-created under a running consumer: for a while, one partition is placed again on the new
    # incarnation while another is still read from the old one, and both can be in one write. Each row and
    # each stored position carries its own partition's topic ID, never the other's: with a key of
    # coordinates plus topic ID, a new message stamped with the old ID would pass for a duplicate.
    coordinates = '["kafka_topic", "kafka_partition", "kafka_offset", "kafka_topic_id"]'
    text = (
        (builtin_dir() / "invoices.toml")
        .read_text()
        .replace('dedupe_key = ["event_id"]', f"dedupe_key = {coordinates}")
    )
    text = text.replace(
        'kafka_offset = { kafka = "offset" }',
        'kafka_offset = { kafka = "offset" }\nkafka_topic_id = { kafka = "topic_id" }',
    )
    (tmp_path / "incarnations.toml").write_text(text)
    spec = load_pipeline(tmp_path / "incarnations.toml")
    target, preparer = Target(spec, database_url), Preparer(spec, database_url)
    try:
        assert target.init_tables()[1] == []
        ids: dict[PartitionId, str | None] = {(TOPIC, 0): "old-incarnation", (TOPIC, 1): "new-incarnation"}
        both = records(40, seed=17, partition=0) + records(40, seed=18, partition=1)
        batch = Batch(both, {(TOPIC, 0): None, (TOPIC, 1): None}, topic_ids=ids)
        result = target.write(batch, preparer.prepare(both, ids), Collecting())
        assert result.inserted == 80
        with psycopg.connect(database_url) as conn:
            stamped = conn.execute(
                "SELECT kafka_partition, array_agg(DISTINCT kafka_topic_id) FROM transactions GROUP BY 1"
            ).fetchall()
            stored = conn.execute("SELECT partition, topic_id FROM microbatch_offsets").fetchall()
        assert sorted(stamped) == [(0, ["old-incarnation"]), (1, ["new-incarnation"])]
        assert sorted(stored) == [(0, "old-incarnation"), (1, "new-incarnation")]
        # A write of partition 1 that claims the old incarnation does not match its stored row.
        late = records(5, seed=19, partition=1, start=40)
        stale: dict[PartitionId, str | None] = {(TOPIC, 1): "old-incarnation"}
        with pytest.raises(PositionConflict) as conflict:
            target.write(Batch(late, {(TOPIC, 1): 40}, topic_ids=stale), preparer.prepare(late, stale), Collecting())
        assert conflict.value.partitions == [(TOPIC, 1)]
        assert count(database_url, "SELECT count(*) FROM transactions") == 80
    finally:
        target.close()
        preparer.close()
