"""The PostgreSQL side of one pipeline: write batches, read and check positions and tables.

`Target` is used by one thread only: in `microbatch run`, the writer thread (consumer.writer_thread),
which owns its database connection; in the other commands, the main thread. Every method that
touches the database raises `DatabaseFailure` (classified transient/systemic) rather than driver
exceptions. What happens before a write (decoding, COPY encoding) is `pipeline.prepare.Preparer`'s,
on the loop thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg

from pipeline import grants, own_tables
from pipeline.database import Database, SessionSettings
from pipeline.decode import DecodedBatch
from pipeline.errors import DatabaseFailure
from pipeline.flush_result import FlushResult
from pipeline.offsets import OffsetsTable, PositionChange, StoredPosition
from pipeline.records import Batch, PartitionId
from pipeline.rejects import RejectSink
from pipeline.schema import Mismatch, init_db, verify
from pipeline.spec import PipelineSpec
from pipeline.sqlplan import WritePlan
from pipeline.writer import BatchWriter

T = TypeVar("T")


class Target:
    """Everything the consumer needs from the database, behind plain data and `DatabaseFailure`."""

    def __init__(
        self,
        spec: PipelineSpec,
        database_url: str,
        *,
        group: str | None = None,
        offsets_table: str = "microbatch_offsets",
        session: SessionSettings | None = None,
        max_savepoints: int = 64,
        max_transactions: int = 8,
        lookup_cache_keys: int = 100_000,
        synchronous_commit: bool = True,
    ) -> None:
        self.spec = spec
        self.group = group or spec.group
        self.plan = WritePlan(spec, offsets_table)
        self.database = Database(database_url, session, setup=[self.plan.create_staging])
        self.offsets = OffsetsTable(spec.schema_name, offsets_table, self.group)
        self.upgrades: list[str] = []  # what the last init_tables() changed in microbatch's own tables
        self.granted: list[str] = []  # the GRANT statements the last init_tables() ran
        self.writer = BatchWriter(
            self.database,
            self.plan,
            self.offsets,
            max_savepoints=max_savepoints,
            max_transactions=max_transactions,
            lookup_cache_keys=lookup_cache_keys,
            synchronous_commit=synchronous_commit,
        )

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
        """Write `batch` (decoded as `decoded`); see BatchWriter.write for the contract."""
        return self.writer.write(
            batch, decoded, sink, on_commit=on_commit, on_statement=on_statement, on_progress=on_progress
        )

    @property
    def connections_opened(self) -> int:
        """Connections opened so far (a new one may face a server that lost its latest commits)."""
        return self.database.opened

    def stored_positions(self, partitions: Iterable[PartitionId]) -> dict[PartitionId, StoredPosition]:
        """Stored positions (absent: no row). Raises DatabaseFailure when the database fails."""
        return self._guard(lambda conn: self.offsets.read(conn, partitions))

    def all_positions(self) -> dict[PartitionId, StoredPosition]:
        return self._guard(self.offsets.read_all)

    def reset_positions(self, changes: Sequence[PositionChange]) -> None:
        """Move positions outside a write, each audited, in one transaction; PositionConflict when a row
        moved meanwhile (nothing is changed then). Raises DatabaseFailure when the database fails."""

        def reset(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                # Durable whatever the session's default: a lost placement (a first row, a reset) would
                # start a partition from the wrong place; its commit also flushes every earlier one.
                conn.execute("SET LOCAL synchronous_commit = on")
                self.offsets.reset(conn, changes)

        self._guard(reset)

    def verify_tables(self) -> list[Mismatch]:
        """Differences between the database and the pipeline's tables, and microbatch's own tables at an
        older schema version (empty: ready to run)."""

        def check(conn: psycopg.Connection[Any]) -> list[Mismatch]:
            lacking = grants.missing_privileges(conn, self.plan)
            if lacking and lacking[0].what == "schema":
                return lacking  # nothing in the schema can be seen without USAGE on it
            outdated = own_tables.check(conn, self.plan.schema, self.plan.offsets_table)
            found = verify(conn, self.plan) + lacking
            if not outdated:
                return found
            # What the upgrade changes in the offsets table (its new columns) is init-db's to mend too.
            offsets = self.plan.offsets_table
            return [Mismatch(offsets, outdated, init_db_mends=True)] + [
                Mismatch(m.table, m.problem, init_db_mends=True) if m.table == offsets else m for m in found
            ]

        return self._guard(check)

    def init_tables(self, grant_to: str | None = None) -> tuple[list[str], list[Mismatch]]:
        """Create missing tables and upgrade microbatch's own in place, verify the rest; never alters or
        drops a pipeline's tables. With `grant_to`, also GRANT that role what the consumer needs
        (pipeline.grants), in the same transaction: a consumer never sees the tables without its
        privileges. Returns (the tables created, mismatches, including what `grant_to` still lacks); what
        the upgrade of microbatch's own tables changed is in `upgrades`, the GRANTs run in `granted`.
        DatabaseFailure, e.g. when the role does not exist."""

        def init(conn: psycopg.Connection[Any]) -> tuple[list[str], list[Mismatch]]:
            with conn.transaction():
                self.upgrades = own_tables.migrate(conn, self.plan.schema, self.plan.offsets_table)
                created, mismatches = init_db(conn, self.plan)
                if grant_to is not None:
                    self.granted = grants.grant(conn, self.plan, grant_to)
                    mismatches += grants.missing_privileges(conn, self.plan, grant_to)
                return created, mismatches

        return self._guard(init)

    @staticmethod
    def driver_version() -> str:
        """psycopg's version and implementation (binary, c or python)."""
        return f"{psycopg.__version__} ({psycopg.pq.__impl__})"

    def ping(self) -> bool:
        """True when the database answers a trivial query now."""
        return self.database.ping()

    def cancel(self) -> None:
        """Ask the server to cancel the statement in flight, from another thread (never raises)."""
        self.database.cancel()

    def close(self) -> None:
        self.database.discard()

    def _guard(self, action: Callable[[psycopg.Connection[Any]], T]) -> T:
        try:
            return action(self.database.connection())
        except (psycopg.Error, OSError) as exc:
            self.database.discard()
            raise DatabaseFailure.of(exc) from exc
