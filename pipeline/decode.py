"""Decode and validate a batch before any SQL: JSON bytes in, staging rows and rejections out.

Everything that can be caught here is caught here (empty, oversize, invalid JSON, wrong types, out
of range, NUL characters, deep nesting, huge integers) so that the database only ever sees rows it
should accept. Pure: no I/O.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.fields import FieldError, compile_field
from pipeline.records import Record, Rejection, RejectReason
from pipeline.spec import PipelineSpec
from pipeline.transform import Transform

DEFAULT_MAX_MESSAGE_BYTES = 1_048_576
VALIDATION = "ValidationError"


@dataclass
class DecodedBatch:
    """The outcome of decoding a batch.

    `rows[i]` is the staging row of `records[row_records[i]]`, and starts with its sequence number
    `i` (the bisection addresses rows by it). `rejections` are records that never reach SQL.
    """

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    row_records: list[int] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    rejected_records: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # records the transform hook chose not to write
    copy_data: bytes | None = None  # all `rows` as binary COPY data, when encoded ahead (pipeline.copydata)

    def reject(self, index: int, rejection: Rejection) -> None:
        """Record that `records[index]` will not be written, and why."""
        self.rejections.append(rejection)
        self.rejected_records.append(index)


def _kafka_value(attribute: str, record: Record) -> Any:
    if attribute == "topic":
        return record.topic
    if attribute == "partition":
        return record.partition
    if attribute == "offset":
        return record.offset
    if attribute == "key":
        return record.key
    if record.timestamp_ms is None:
        return None
    return datetime.fromtimestamp(record.timestamp_ms / 1000, tz=UTC)


class Decoder:
    """Compiled once per pipeline; `decode()` is the per-batch hot path."""

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        transform: Transform | None = None,
    ) -> None:
        self.spec = spec
        self.transform = transform
        self.max_message_bytes = max_message_bytes
        self.field_names = tuple(spec.fields)
        self._extracts = tuple(compile_field(name, fs) for name, fs in spec.fields.items())
        self.kafka_attributes = tuple(
            dict.fromkeys(col.kafka for col in spec.raw.columns.values() if col.kafka is not None)
        )
        # Topic, partition and offset are copied as they are: one C call for all of them.
        plain = self.kafka_attributes and all(a in {"topic", "partition", "offset"} for a in self.kafka_attributes)
        self._kafka_plain = operator.attrgetter(*self.kafka_attributes) if plain else None

    def decode(self, records: Sequence[Record]) -> DecodedBatch:
        """Decode `records` in order; never raises for bad input (bad input becomes a Rejection)."""
        out = DecodedBatch()
        rows, row_records = out.rows, out.row_records
        extracts, kafka_attributes, kafka_plain = self._extracts, self.kafka_attributes, self._kafka_plain
        limit = self.max_message_bytes
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        transform = self.transform
        for index, record in enumerate(records):
            value = record.value
            if not value:
                out.reject(index, Rejection(record, RejectReason.EMPTY, "message value is empty", VALIDATION))
                continue
            if len(value) > limit:
                message = f"message value is larger than {limit} bytes"
                out.reject(index, Rejection(record, RejectReason.TOO_LARGE, message, VALIDATION))
                continue
            try:
                event = loads(value)
            except decode_error as exc:
                out.reject(index, Rejection(record, RejectReason.INVALID_JSON, _json_reason(exc), "JSONDecodeError"))
                continue
            if type(event) is not dict:
                message = "event is not a JSON object"
                out.reject(index, Rejection(record, RejectReason.INVALID_EVENT, message, VALIDATION))
                continue
            if transform is not None:
                try:
                    event = transform(event)
                except Exception as exc:
                    message = f"transform raised {type(exc).__name__}: {str(exc)[:200]}"
                    out.reject(index, Rejection(record, RejectReason.INVALID_EVENT, message, type(exc).__name__))
                    continue
                if event is None:
                    out.skipped.append(index)
                    continue
                if type(event) is not dict:
                    message = f"transform returned {type(event).__name__}, not a dict or None"
                    out.reject(index, Rejection(record, RejectReason.INVALID_EVENT, message, "TransformError"))
                    continue
            try:
                row = [len(rows), *[extract(event) for extract in extracts]]
            except FieldError as exc:
                out.reject(index, Rejection(record, RejectReason.INVALID_EVENT, str(exc), "FieldError"))
                continue
            if kafka_plain is not None:
                extra = kafka_plain(record)
                row.extend(extra if len(kafka_attributes) > 1 else (extra,))
            elif kafka_attributes:
                row.extend(_kafka_value(attribute, record) for attribute in kafka_attributes)
            rows.append(tuple(row))
            row_records.append(index)
        return out


def _json_reason(exc: Exception) -> str:
    # orjson's messages describe the position and the problem, never the document's content.
    return f"not valid JSON: {str(exc)[:200]}"
