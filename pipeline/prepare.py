"""What the loop thread does to a window before the writer gets it: decode, validate, encode for COPY.

`Preparer` is used by the loop thread only. Its work overlaps the previous window's write, which
waits on PostgreSQL: the writer then only sends bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.copydata import CopyEncoder
from pipeline.decode import DecodedBatch, Decoder
from pipeline.records import PartitionId, Record
from pipeline.spec import PipelineSpec
from pipeline.spec_loader import PipelineFileError
from pipeline.sqlplan import WritePlan
from pipeline.transform import Transform, TransformError, load_transform


def transform_of(spec: PipelineSpec) -> Transform | None:
    """The pipeline's transform hook, imported (None: it has none); PipelineFileError when it does not load."""
    if spec.transform is None:
        return None
    try:
        return load_transform(spec.transform, spec.origin)
    except TransformError as exc:
        raise PipelineFileError(str(exc)) from None


class Preparer:
    """Decodes records into staging rows and rejections, and encodes the rows as COPY data."""

    def __init__(
        self, spec: PipelineSpec, database_url: str | None = None, *, max_message_bytes: int = 1_048_576
    ) -> None:
        """`database_url`: where the encoder borrows its adapters (None: the writer encodes, row by row)."""
        self.decoder = Decoder(spec, max_message_bytes=max_message_bytes, transform=transform_of(spec))
        self.encoder = None if database_url is None else CopyEncoder(database_url, WritePlan(spec).copy_types)

    def decode(self, records: Sequence[Record]) -> DecodedBatch:
        """Decode and validate `records` (pure); never raises for bad input."""
        return self.decoder.decode(records)

    def prepare(
        self, records: Sequence[Record], topic_ids: Mapping[PartitionId, str | None] | None = None
    ) -> DecodedBatch:
        """Decode `records` (read from the topic incarnations `topic_ids`) and encode their COPY data."""
        decoded = self.decoder.decode(records, topic_ids)
        if self.encoder is not None and decoded.rows:
            decoded.copy_data = self.encoder.encode(decoded.rows)
        return decoded

    def close(self) -> None:
        if self.encoder is not None:
            self.encoder.close()
