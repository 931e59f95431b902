"""Write a decoded batch to PostgreSQL: one transaction per flush, bisection when rows are rejected.

The order inside a transaction is the correctness argument; the steps are numbered here and in
`BatchWriter._transaction`:

  1. compare-and-set the positions of every partition still to be written (offsets table),
     sent in one round trip with the BEGIN (pipeline mode);
  2. COPY the rows into the session's temp staging table;
  2b. the pipeline's lookups, one statement each (pipeline.lookup_sql): create the reference rows
     of new keys, and take out the rows a find-only lookup has no reference row for;
  3+4. one statement inserts the new rows into the raw table (ids joined from the reference
     tables) and upserts the summaries from what was new;
  5. rejected records go to the reject sink, which returns only once they are durably stored
     (the dead-letter topic acknowledged them), before any position moves past them (decoding's
     rejections were sent ahead during the COPY: the sink mostly finds them acknowledged); the
     database's verdicts among them are remembered first and stand even if the delivery or the
     COMMIT fails (pipeline.sent_verdicts: the retry rejects those rows untried);
  6. COMMIT.

The first statement of a write runs without a SAVEPOINT: clean batches are the common case, and
the SAVEPOINT and its RELEASE are two more round trips. If it fails on bad data (SQLSTATE class
22/23, 54000) the transaction rolls back and the next one bisects: the failing range is split in
halves, each under its own SAVEPOINT, down to single rows: the leaves are the per-message writes.
Savepoints per transaction are capped (`max_savepoints`, PostgreSQL caches 64 subtransactions per
backend): past the cap the resolved prefix is committed and the rest continues in a new
transaction; after `max_transactions` of those, each transaction takes the next `max_savepoints`
rows only (not one message per transaction: 4,100 commits for a window with 9% bad rows).
With `synchronous_commit` off (`replay` durability) a database crash may lose the last commits, rows and positions
together, and the consumer reads those messages again (the compare-and-set fails, or the positions read
back are behind). Such a COMMIT returns before it is durable, so nothing may seed a position from the
advisory Kafka commit sent after it: replay refuses adopt_kafka_offsets; placements commit durably.
Transient and systemic errors are not handled here: the transaction rolls back and they surface as
`DatabaseFailure` for the caller to retry or halt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import psycopg

from pipeline import failpoints
from pipeline.bisect import Node, RangeStack
from pipeline.database import Database
from pipeline.decode import DecodedBatch
from pipeline.errors import DatabaseFailure, FailureClass, RowEncodingError, classify, redacted_message
from pipeline.flush_result import FlushResult
from pipeline.lookup_cache import KnownKeys
from pipeline.offsets import OffsetsTable
from pipeline.records import PARTITION_OF, Batch, PartitionId, Rejection, RejectReason
from pipeline.rejects import RejectSink, RejectSinkError
from pipeline.sent_verdicts import SentVerdicts
from pipeline.sqlplan import WritePlan
from pipeline.write_run import WriteRun

# Pipeline mode needs libpq 14 or later (the binary wheel bundles a newer one).
_PIPELINE_SUPPORTED = psycopg.Pipeline.is_supported()


class _CopyFailed(Exception):
    """Internal: the bulk COPY hit bad data; roll back and copy inside each bisection node."""


class _BulkFailed(Exception):
    """Internal: the first statement (no SAVEPOINT) hit bad data; roll back and bisect in a new transaction."""


class BatchWriter:
    """Writes the batches of one pipeline through one `Database` (one thread)."""

    def __init__(
        self,
        database: Database,
        plan: WritePlan,
        offsets: OffsetsTable,
        *,
        max_savepoints: int = 64,
        max_transactions: int = 8,
        lookup_cache_keys: int = 100_000,
        synchronous_commit: bool = True,
    ) -> None:
        if max_savepoints < 2 or max_transactions < 1:  # the first transaction tries the whole batch at once
            raise ValueError("max_savepoints must be at least 2 and max_transactions at least 1")
        self.known = KnownKeys(plan.spec, plan.staging_columns, lookup_cache_keys if plan.spec.lookups else 0)
        self.database = database
        self.plan = plan
        self.offsets = offsets
        self.max_savepoints = max_savepoints
        self.max_transactions = max_transactions
        self.synchronous_commit = synchronous_commit
        self._known_since = 0  # the connection the known keys were learnt on (Database.opened)
        self.sent = SentVerdicts()

    def write(
        self,
        batch: Batch,
        decoded: DecodedBatch,
        sink: RejectSink,
        *,
        on_commit: Callable[[dict[PartitionId, int]], None] | None = None,
        on_statement: Callable[[], None] | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> FlushResult:
        """Write `batch` (decoded as `decoded`) and move its positions, in one or more commits.

        `on_commit` receives the stored positions after every COMMIT (a flush that isolates many
        bad rows commits more than once). `on_statement` is called once, just before the first
        insert-and-upsert statement is sent: from then on the write mostly waits for PostgreSQL.
        `on_progress` is called after every step that can wait (the compare-and-set, a COPY, a
        statement, the dead-letter delivery, a COMMIT): between two calls there is at most one wait
        bounded by statement_timeout, lock_timeout or the reject sink's own timeout, however long
        the whole write is (a liveness probe watches it).

        Raises PositionConflict (nothing of the current transaction was written), RejectSinkError,
        or DatabaseFailure (classified). In every case the open transaction was rolled back, and earlier
        commits were reported through `on_commit`.
        """
        # Rows an attempt that did not commit may have dead-lettered stay rejected (pipeline.sent_verdicts);
        # the rows around them are written under savepoints, as a bisection writes them.
        settled = self.sent.take(batch, decoded.row_records)
        stack = RangeStack(len(decoded.rows), settled)
        run = WriteRun(batch, decoded, dict(batch.from_positions), stack, settled=settled, on_statement=on_statement)
        if on_progress is not None:
            run.on_progress = on_progress
        try:
            while run.committed_records < len(batch.records):
                sliced = run.result.transactions >= self.max_transactions
                try:
                    committed = self._transaction(run, sink, sliced=sliced)
                except _CopyFailed:
                    run.result.bisected = run.copy_per_node = True
                    continue
                except _BulkFailed:
                    run.result.bisected = True
                    continue
                if on_commit is not None:
                    on_commit(committed)
                run.on_progress()
        except (psycopg.Error, OSError) as exc:
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError):
                self.database.discard()
            raise DatabaseFailure.of(exc) from exc
        run.result.stored_positions = {pid: pos for pid, pos in run.stored.items() if pos is not None}
        run.result.skipped = len(decoded.skipped)
        return run.result

    def _transaction(self, run: WriteRun, sink: RejectSink, *, sliced: bool) -> dict[PartitionId, int]:
        """One transaction resolving what its savepoints allow of the batch (`sliced`: its next max_savepoints rows)."""
        conn = self.database.connection()
        if self.database.opened != self._known_since:  # a new connection: reference rows may have been lost
            self.known.forget()
            self._known_since = self.database.opened
        start = run.committed_records
        # The batch's partitions are its to_positions' keys: no pass over its records for a whole batch.
        partitions = set(run.batch.to_positions) if start == 0 else set(map(PARTITION_OF, run.batch.records[start:]))
        rows = run.decoded.rows
        first_row = run.stack.resolved
        limit = min(len(rows), first_row + self.max_savepoints) if sliced else len(rows)
        # 1. compare-and-set: this transaction owns these partitions' ranges, or nobody writes.
        targets = {pid: run.batch.to_positions[pid] for pid in partitions}
        with self._begin(conn, {pid: run.stored.get(pid) for pid in partitions}, targets, run.batch):
            run.on_progress()
            if first_row < limit:
                if not run.copy_per_node:
                    # 2. COPY once for the whole transaction; the statements select ranges of it. While
                    # PostgreSQL reads it, decoding's rejections start on their way to the sink (step 5).
                    # Decoding's rejections only: the database's are handed over in step 5 (sent_verdicts).
                    ahead = run.decoded.rejections if start == 0 else []
                    self._copy_bulk(conn, rows, first_row, limit, run.decoded.copy_data,
                                    meanwhile=lambda: sink.send_ahead(ahead, run.batch.records))  # fmt: skip
                    run.on_progress()
                # 3+4. the insert-and-upsert statement, bisected on bad data.
                self._bisect(conn, run, limit, budget=self.max_savepoints)
            boundary = run.record_boundary()
            committed = run.positions_at(boundary, partitions)
            if committed != targets:
                # The budget ran out: commit the resolved prefix only (we hold these rows' locks).
                self.offsets.move(conn, {pid: at for pid, at in committed.items() if at != targets[pid]})
                run.on_progress()
            # 5. rejected records are durably stored before the positions move past them.
            fresh = run.rejections_between(start, boundary)
            self._deliver(run, sink, fresh, start, boundary)
            run.on_progress()
            failpoints.hit("before_commit")
            # 6. COMMIT when the block ends.
        failpoints.hit("commit_ack_lost")
        rejected = run.db_rejections
        span = range(first_row, run.stack.resolved)
        self.known.committed(rows, [row for row in span if row not in rejected] if rejected else span)
        run.result.transactions += 1  # committed ones only
        run.result.rejections.extend(fresh)
        run.stored.update(committed)
        run.committed_records = boundary
        self.sent.settle(committed)
        return committed

    def _deliver(self, run: WriteRun, sink: RejectSink, fresh: list[Rejection], start: int, boundary: int) -> None:
        """Step 5 for the records [start, boundary). The database's verdicts among `fresh` stand from
        the moment their letters may reach the dead-letter topic, whatever fails next (sent_verdicts);
        a sink that refused before handing any over (the breaker, no topic) leaves new ones unjudged."""
        rows = run.decoded.row_records
        new = [r for row, r in run.db_rejections.items() if start <= rows[row] < boundary and row not in run.settled]
        self.sent.remember(new, run.batch.topic_ids)
        try:
            sink.deliver(fresh, run.batch.records[start:boundary])
        except RejectSinkError as error:
            if not error.handed_over:
                self.sent.forget(new)
            raise

    @contextmanager
    def _begin(
        self,
        conn: psycopg.Connection[Any],
        expected: dict[PartitionId, int | None],
        targets: dict[PartitionId, int],
        batch: Batch,
    ) -> Iterator[None]:
        """A transaction block whose BEGIN and compare-and-set travel in one round trip (pipeline mode).

        Leaving the pipeline syncs it; the check then raises PositionConflict, which rolls the
        transaction back like any error inside the block. `psycopg.Transaction` is entered directly:
        `conn.transaction()` would keep the connection in pipeline mode for the whole block, where
        COPY is not allowed.
        """
        # libpq older than 14 has no pipeline mode: then the two travel in two round trips.
        batched = conn.pipeline() if _PIPELINE_SUPPORTED else nullcontext()
        with ExitStack() as transaction:
            with batched:
                transaction.enter_context(psycopg.Transaction(conn))
                if not self.synchronous_commit:  # durability = replay: see the module docstring
                    conn.execute("SET LOCAL synchronous_commit = off")
                # A constraint a hand-made table declares INITIALLY DEFERRED would be checked at COMMIT,
                # past the bisection: one bad row would fail the window's every retry. Checked at each
                # statement, it is isolated and dead-lettered like any other.
                conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
                check = self.offsets.compare_and_set(conn, expected, targets, batch.topic_ids, batch.leader_epochs())
            check()
            yield

    def _copy_bulk(
        self, conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]], lo: int, hi: int, encoded: bytes | None,
        *, meanwhile: Callable[[], None],
    ) -> None:  # fmt: skip
        try:
            self._copy(conn, rows, lo, hi, encoded, meanwhile=meanwhile)
        except psycopg.Error as exc:
            if classify(exc) is not FailureClass.BAD_DATA:
                raise
            raise _CopyFailed from exc

    def _copy(
        self, conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]], lo: int, hi: int,
        encoded: bytes | None = None, *, meanwhile: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        """COPY rows [lo, hi) into staging: the bytes encoded ahead when they are exactly those rows.
        `meanwhile` runs once the rows are handed to libpq, before the COPY's end is sent: PostgreSQL
        is still reading them."""
        if encoded is not None and lo == 0 and hi == len(rows):
            half = len(encoded) // 2
            with conn.cursor().copy(self.plan.copy_staging) as copy:
                copy.write(encoded[:half])
                failpoints.hit("mid_copy")
                copy.write(encoded[half:])
                meanwhile()
            return
        middle = (lo + hi) // 2
        with conn.cursor().copy(self.plan.copy_staging) as copy:
            copy.set_types(self.plan.copy_types)
            write_row = copy.write_row
            try:
                for index in range(lo, middle):
                    write_row(rows[index])
                failpoints.hit("mid_copy")
                for index in range(middle, hi):
                    write_row(rows[index])
            except (TypeError, ValueError, OverflowError) as exc:
                # A value the validators let through but the binary encoder refuses: bad data.
                raise RowEncodingError(f"a value cannot be encoded for the database ({type(exc).__name__})") from exc
            meanwhile()

    def _bisect(self, conn: psycopg.Connection[Any], run: WriteRun, limit: int, budget: int) -> None:
        """Resolve ranges left to right until `limit` rows are resolved or the budget is spent."""
        stack = run.stack
        if not run.result.bisected and not run.copy_per_node and not run.settled:
            self._bulk_statement(conn, run, limit)
            return
        while budget > 0 and (node := stack.next(limit)) is not None:
            if node.settled:  # handed to the dead-letter topic by an attempt that did not commit: untried
                run.db_rejections[node.lo] = run.settled[node.lo]
                stack.reject(node)
                continue
            budget -= 1
            run.result.savepoints += 1
            try:
                with conn.transaction():  # SAVEPOINT … RELEASE, or ROLLBACK TO on error
                    misses = self._statement(conn, run, node)
            except psycopg.Error as exc:
                self._failed(conn, run, node, exc)
            else:
                self._succeeded(run, node, misses)

    def _bulk_statement(self, conn: psycopg.Connection[Any], run: WriteRun, limit: int) -> None:
        """Every row in one statement, without a SAVEPOINT; bad data raises _BulkFailed.

        Only before any bad data was seen in this write: the stack then holds one range from the
        transaction's first row. On failure the range is split (or, one row, rejected) before the
        whole transaction rolls back, so the next transaction starts bisecting.
        """
        stack = run.stack
        node = stack.next(limit)
        if node is None:  # pragma: no cover - called only with rows left to write
            return
        try:
            # The node is every row the transaction staged: the statements need no range.
            misses = self._statement(conn, run, node, whole=True)
        except psycopg.Error as exc:
            self._failed(conn, run, node, exc)
            raise _BulkFailed from exc
        self._succeeded(run, node, misses)

    @staticmethod
    def _succeeded(run: WriteRun, node: Node, misses: dict[int, Rejection]) -> None:
        """`node` was written; rows whose lookup found no reference row are rejected (known only now:
        a node that fails rolls its lookups back with it, and its rows are looked up again)."""
        run.db_rejections.update(misses)
        run.stack.succeed(node)

    def _failed(self, conn: psycopg.Connection[Any], run: WriteRun, node: Node, exc: psycopg.Error) -> None:
        """A statement over `node` failed: split it, or reject its one row; re-raise what is not bad data."""
        if classify(exc) is not FailureClass.BAD_DATA or conn.broken:
            raise exc
        self.known.forget()  # a reference row may be gone: the retried ranges look their keys up again
        if node.size == 1:
            run.db_rejections[node.lo] = self._rejection(run, node, exc)
            run.stack.reject(node)
        else:
            run.stack.fail(node)

    def _statement(
        self, conn: psycopg.Connection[Any], run: WriteRun, node: Node, *, whole: bool = False
    ) -> dict[int, Rejection]:
        """Write the rows of `node`: its lookups, then the insert-and-upsert statement. Returns the
        rows (by index) that a find-only lookup found no reference row for: they were not written."""
        if run.copy_per_node:
            self._copy(conn, run.decoded.rows, node.lo, node.hi)
            run.on_progress()
        notify = run.on_statement
        if notify is not None:
            run.on_statement = None
            notify()
        params = None if whole else {"lo": node.lo, "hi": node.hi}
        misses = self._lookups(conn, run, node, params)
        failpoints.hit("after_lookups")
        cursor = conn.execute(self.plan.flush_all if whole else self.plan.flush, params)
        counts = cursor.fetchone()
        run.on_progress()
        result = run.result
        result.statements += 1
        if counts is None or cursor.description is None:  # pragma: no cover - the statement returns one row
            return misses
        # One count per table, named after it (WritePlan.flush): the raw table's, then each summary's.
        by_table = {column.name: int(count) for column, count in zip(cursor.description, counts, strict=True)}
        inserted = by_table.pop(self.plan.spec.raw.table)
        result.inserted += inserted
        result.duplicates += node.size - len(misses) - inserted
        for table, count in by_table.items():
            result.summary_rows[table] = result.summary_rows.get(table, 0) + count
        return misses

    def _lookups(
        self, conn: psycopg.Connection[Any], run: WriteRun, node: Node, params: dict[str, int] | None
    ) -> dict[int, Rejection]:
        """Run the lookups' statements (pipeline.lookup_sql) over `node` (`params` None: all staged rows)."""
        misses: dict[int, Rejection] = {}
        for step in self.plan.lookups.statements:
            # Every key has a committed reference row: nothing to create, nothing missing. A single row
            # always looks up, so that a row is never rejected on what the cache believed.
            if node.size > 1 and self.known.all_known(step.lookup, run.decoded.rows, node.lo, node.hi):
                continue
            cursor = step.run(conn, params)
            run.on_progress()
            run.result.statements += 1
            for (row,) in cursor.fetchall() if step.returns_misses else ():
                record = run.batch.records[run.decoded.row_records[row]]
                misses[row] = Rejection(record, RejectReason.UNKNOWN_REFERENCE, step.miss_message, "UnknownReference")
        return misses

    @staticmethod
    def _rejection(run: WriteRun, node: Node, exc: psycopg.Error) -> Rejection:
        record = run.batch.records[run.decoded.row_records[node.lo]]
        return Rejection(record, RejectReason.DB_REJECTED, redacted_message(exc), type(exc).__name__, exc.sqlstate)
