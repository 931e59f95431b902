"""Kafka messages as plain data: the pipeline never sees confluent_kafka types."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from pipeline.records import Header, Record


def to_record(message: Message) -> Record:
    """The record of a consumed message (no error)."""
    kind, stamp = message.timestamp()
    headers = message.headers()
    return Record(
        message.topic() or "",
        message.partition() or 0,
        message.offset() or 0,
        message.key(),
        message.value(),
        normalize_headers(headers) if headers else (),
        stamp if kind != TIMESTAMP_NOT_AVAILABLE else None,
    )


def normalize_headers(headers: object) -> tuple[Header, ...]:
    """(name, bytes) pairs, whatever shape the binding hands out (list of pairs or dict; str or bytes)."""
    if not headers:
        return ()
    pairs: Iterable[tuple[object, object]] = headers.items() if isinstance(headers, dict) else headers  # type: ignore[assignment]
    return tuple(
        (str(name), value.encode() if isinstance(value, str) else value if isinstance(value, bytes) else None)
        for name, value in pairs
    )
