"""The PostgreSQL side of one pipeline, as one object: decode, write, read positions, check tables."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg

from pipeline.database import Database, SessionSettings
from pipeline.decode import DecodedBatch, Decoder
from pipeline.errors import classify, redacted_message
from pipeline.offsets import OffsetsTable
from pipeline.records import Batch, PartitionId, Record
from pipeline.schema import Mismatch, init_db, verify
from pipeline.spec import PipelineSpec
from pipeline.spec_loader import PipelineFileError
from pipeline.sqlplan import WritePlan
from pipeline.transform import TransformError, load_transform
from pipeline.writer import BatchWriter, FlushResult, RejectSink, WriteError

T = TypeVar("T")


class Pipeline:
    """Everything the consumer needs from the database, behind plain data and pipeline errors.

    Not thread-safe: one thread (the run loop) uses it. Every method that touches the database
    raises WriteError (classified transient/bad data/systemic) rather than driver exceptions.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        database_url: str,
        *,
        group: str | None = None,
        offsets_table: str = "microbatch_offsets",
        session: SessionSettings | None = None,
        max_message_bytes: int = 1_048_576,
        max_savepoints: int = 64,
        max_transactions: int = 8,
    ) -> None:
        self.spec = spec
        self.group = group or spec.group
        self.plan = WritePlan(spec, offsets_table)
        transform = None
        if spec.transform is not None:
            try:
                transform = load_transform(spec.transform, spec.origin)
            except TransformError as exc:
                raise PipelineFileError(str(exc)) from None
        self.decoder = Decoder(spec, max_message_bytes=max_message_bytes, transform=transform)
        self.database = Database(database_url, session, setup=[self.plan.create_staging])
        self.offsets = OffsetsTable(spec.schema_name, offsets_table, self.group)
        self.writer = BatchWriter(
            self.database,
            self.plan,
            self.offsets,
            max_savepoints=max_savepoints,
            max_transactions=max_transactions,
        )

    def decode(self, records: Sequence[Record]) -> DecodedBatch:
        """Decode and validate `records` (pure); see `prepare` for the write-ahead form."""
        return self.decoder.decode(records)

    def prepare(self, records: Sequence[Record]) -> DecodedBatch:
        """Decode `records` and encode their COPY data ahead of the write (the loop thread's share)."""
        decoded = self.decoder.decode(records)
        self.writer.encode(decoded)
        return decoded

    def write(
        self,
        batch: Batch,
        sink: RejectSink,
        on_commit: Callable[[dict[PartitionId, int]], None] | None = None,
        decoded: DecodedBatch | None = None,
        on_statement: Callable[[], None] | None = None,
    ) -> FlushResult:
        """Decode (unless given) and write `batch`; see BatchWriter.write for the contract."""
        return self.writer.write(batch, decoded or self.decode(batch.records), sink, on_commit, on_statement)

    def stored_positions(self, partitions: Iterable[PartitionId]) -> dict[PartitionId, int]:
        """Stored positions (absent: no row). Raises WriteError when the database fails."""
        return self._guard(lambda conn: self.offsets.read(conn, partitions))

    def all_positions(self) -> dict[PartitionId, int]:
        return self._guard(self.offsets.read_all)

    def verify_tables(self) -> list[Mismatch]:
        """Differences between the database and the pipeline's tables (empty: ready to run)."""
        return self._guard(lambda conn: verify(conn, self.plan))

    def init_tables(self) -> tuple[list[str], list[Mismatch]]:
        """Create missing tables, verify the rest; never alters or drops."""
        return self._guard(lambda conn: init_db(conn, self.plan))

    @staticmethod
    def driver_version() -> str:
        """psycopg's version and implementation (binary, c or python)."""
        return f"{psycopg.__version__} ({psycopg.pq.__impl__})"

    def ping(self) -> bool:
        """True when the database answers a trivial query now."""
        return self.database.ping()

    def close(self) -> None:
        self.database.discard()

    def _guard(self, action: Callable[[psycopg.Connection[Any]], T]) -> T:
        try:
            return action(self.database.connection())
        except (psycopg.Error, OSError) as exc:
            self.database.discard()
            raise WriteError(classify(exc), getattr(exc, "sqlstate", None), redacted_message(exc)) from exc
