"""Kafka messages as plain data: the pipeline never sees confluent_kafka types."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, Message

from pipeline.records import Record, Run


def to_runs(messages: Iterable[Message]) -> tuple[list[Run], list[tuple[Message, KafkaError]]]:
    """The records of the consumed messages without an error, in order and cut into runs as
    `pipeline.records.ascending_runs` cuts them, and the messages with an error.

    The loop's first pass over every message, so written for speed: one frame for the whole batch,
    headers left in the message until they are needed (`headers_of`), and the runs found on the way
    (the window, the positions and the metrics then work once per run).
    """
    runs: list[Run] = []
    errors: list[tuple[Message, KafkaError]] = []
    new, no_stamp = tuple.__new__, TIMESTAMP_NOT_AVAILABLE
    run: list[Record] = []
    topic: str | None = None
    partition, last = -1, 0
    for message in messages:
        if (error := message.error()) is not None:
            errors.append((message, error))
            continue
        kind, stamp = message.timestamp()
        # A message without an error always has its topic, partition and offset.
        name, number, offset = message.topic() or "", message.partition() or 0, message.offset() or 0
        if number != partition or name != topic or offset <= last:
            topic, partition, run = name, number, []
            runs.append(((name, number), run))
        last = offset
        # tuple.__new__ builds the named tuple without its Python-level __new__ (0.3 µs per record).
        at = stamp if kind != no_stamp else None
        # The headers' accessor, not the headers: they are read when a dead letter needs them (headers_of).
        run.append(new(Record, (name, number, offset, message.key(), message.value(), message.headers, at)))
    return runs, errors
