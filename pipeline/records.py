"""The plain data that crosses the consumer/pipeline boundary.

A batch is a list of `Record`s (no Kafka types) ordered by partition then offset, plus the positions
it moves; the write returns which records were rejected and why. Positions (docs/ARCHITECTURE.md):
a partition's *position* is the offset of the next record to read, as in Kafka; its *stored
position* is the one in the offsets table, which only a flush's compare-and-set moves.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from operator import itemgetter
from typing import NamedTuple

PartitionId = tuple[str, int]
"""(topic, partition)."""

Header = tuple[str, bytes | None]


HeaderSource = Callable[[], object]
"""A consumed message's own accessor of its headers, as the Kafka client hands them out."""


class Record(NamedTuple):
    """One Kafka message as the pipeline sees it (a named tuple: built once per message, so it is cheap).

    `headers` are (name, bytes or None) pairs, or for a consumed message the HeaderSource they are
    read from when something needs them (`headers_of` reads either): only a dead letter does, and
    reading every message's headers up front cost about 0.5 µs per message that has any. So a
    consumed record keeps its message alive (about 150 bytes with the accessor, not counted in a
    window's bytes), and two records of the same message consumed twice are not equal: records are
    compared by their coordinates, never as wholes.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] | HeaderSource = ()
    timestamp_ms: int | None = None

    @property
    def partition_id(self) -> PartitionId:
        return (self.topic, self.partition)

    @property
    def size(self) -> int:
        """Bytes this record holds in a window: key plus value."""
        return len(self.value or b"") + len(self.key or b"")


# Put in a message's place of its headers once they proved unreadable (read_headers).
_UNREADABLE: list[Header] = []


def headers_of(record: Record) -> tuple[Header, ...] | None:
    """A record's headers as (name, bytes or None) pairs, read from its message if they were not read
    yet; None when the Kafka client cannot read them (`read_headers`)."""
    return read_headers(record.headers)


def read_headers(source: tuple[Header, ...] | HeaderSource) -> tuple[Header, ...] | None:
    """(name, bytes or None) pairs from pairs, or from a consumed message's accessor; None when the
    accessor cannot read them. Never raises, and safe to call again for the same message.

    Kafka header names are bytes, and a producer other than the Java client may send any (librdkafka,
    Go, Rust). confluent-kafka (2.16) decodes each name as UTF-8 without checking the result: for a
    name that is not UTF-8, the message's first `headers()` raises SystemError, and leaves a list
    holding a NULL in the message that crashes the interpreter when it is read. So after a failed
    read the message's own `set_headers` replaces that list with a marker, which this and every later
    read answer None for: one such message is a dead letter without its headers, not a crash loop.
    """
    if not callable(source):
        return normalize_headers(source)
    try:
        found = source()
    except Exception:  # whatever the client raises, the headers are unreadable
        replace = getattr(getattr(source, "__self__", None), "set_headers", None)
        if callable(replace):
            # confluent-kafka's only swaps a pointer; if another client's failed, they stay unreadable: None.
            with contextlib.suppress(Exception):
                replace(_UNREADABLE)
        return None
    return None if found is _UNREADABLE else normalize_headers(found)


def leader_epoch_of(record: Record) -> int | None:
    """The Kafka leader epoch of a consumed record's message (the epoch of the partition leader that
    appended it), read through the message its headers' accessor belongs to; None for a record that
    was not consumed (its headers are pairs) or a message without one.

    Read only for the last record of each partition in a batch, when its position is stored: a field
    of its own would cost every record a call on the hot path.
    """
    read = getattr(getattr(record.headers, "__self__", None), "leader_epoch", None)
    if not callable(read):
        return None
    epoch = read()
    return epoch if isinstance(epoch, int) and epoch >= 0 else None


def normalize_headers(headers: object) -> tuple[Header, ...]:
    """(name, bytes) pairs, whatever shape the Kafka client hands out (list of pairs or dict; str or bytes)."""
    if not headers:
        return ()
    pairs: Iterable[tuple[object, object]] = headers.items() if isinstance(headers, dict) else headers  # type: ignore[assignment]
    return tuple(
        (str(name), value.encode() if isinstance(value, str) else value if isinstance(value, bytes) else None)
        for name, value in pairs
    )


_FIELD = Record._fields.index
PARTITION_OF: Callable[[Record], PartitionId] = itemgetter(_FIELD("topic"), _FIELD("partition"))
"""A record's (topic, partition), in C."""
OFFSET_OF: Callable[[Record], int] = itemgetter(_FIELD("offset"))
_KEY, _VALUE = itemgetter(_FIELD("key")), itemgetter(_FIELD("value"))


class RejectReason(StrEnum):
    """Why a record was not written (the `dlq.reason` header)."""

    INVALID_JSON = "invalid_json"
    INVALID_EVENT = "invalid_event"
    TOO_LARGE = "too_large"
    EMPTY = "empty"
    DB_REJECTED = "db_rejected"
    UNKNOWN_REFERENCE = "unknown_reference"  # a find-only lookup has no reference row for the event's key


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that will never be written, with the reason and a message free of row values."""

    record: Record
    reason: RejectReason
    message: str
    error_class: str
    sqlstate: str | None = None


Run = tuple[PartitionId, list[Record]]
"""Records of one partition whose offsets strictly ascend, in the order they came: a consume() batch
is handled as its runs (consumer.messages.to_runs), so that per-partition work is done once per run."""


def ascending_runs(records: Iterable[Record]) -> list[Run]:
    """`records` cut into runs where the partition changes or an offset does not ascend, in their order.

    consumer.messages.to_runs cuts the consumed messages in the same places while it reads them.
    """
    runs: list[Run] = []
    run: list[Record] = []
    pid: PartitionId | None = None
    last = 0
    for record in records:
        if (record.topic, record.partition) != pid or record.offset <= last:
            pid, run = (record.topic, record.partition), []
            runs.append((pid, run))
        last = record.offset
        run.append(record)
    return runs


def ordered_runs(records: Sequence[Record]) -> Iterator[tuple[PartitionId, Sequence[Record]]]:
    """Records ordered by (topic, partition, offset), as a batch's are, as runs of one partition each:
    each run is found by bisection (a few comparisons per partition, none per record) and sliced off.

    Raises ValueError when the records are visibly not in that order (a run that ends in another
    partition, a partition after a greater one, a run whose offsets go down): a caller's broken
    promise stops the loop rather than attribute a record to the wrong partition.
    """
    start, end, previous = 0, len(records), None
    while start < end:
        pid = PARTITION_OF(records[start])
        stop = bisect_right(records, pid, start, end, key=PARTITION_OF)
        run = records[start:stop]
        if (previous is not None and pid <= previous) or PARTITION_OF(run[-1]) != pid or run[-1].offset < run[0].offset:
            raise ValueError(f"records are not ordered by (topic, partition, offset) around {pid}")
        yield pid, run
        start, previous = stop, pid


def records_bytes(records: Iterable[Record]) -> int:
    """Keys plus values of `records`, in bytes (a C-level pass: no per-record Python frame)."""
    chunks = list(records)
    return sum(map(len, filter(None, map(_VALUE, chunks)))) + sum(map(len, filter(None, map(_KEY, chunks))))


def partition_spans(records: Sequence[Record]) -> dict[PartitionId, tuple[int, int]]:
    """(first offset, position after the last) of each partition, for records ordered by
    (topic, partition, offset) as a batch's are."""
    spans: dict[PartitionId, tuple[int, int]] = {}
    for pid, run in ordered_runs(records):
        spans[pid] = (run[0].offset, run[-1].offset + 1)
    return spans


def next_positions(records: Iterable[Record]) -> dict[PartitionId, int]:
    """The position after each partition's last record: what the offsets table advances to."""
    positions: dict[PartitionId, int] = {}
    for record in records:
        pid = record.partition_id
        if record.offset + 1 > positions.get(pid, -1):
            positions[pid] = record.offset + 1
    return positions


@dataclass(frozen=True)
class Batch:
    """A closed window handed to the writer: records and the positions they move.

    `records` are ordered by (topic, partition, offset). For every partition in the batch,
    `from_positions` holds its stored position before this batch (None: no stored row yet) and
    `to_positions` the position after its last record; the write moves each one from the first to
    the second with a compare-and-set.
    """

    records: Sequence[Record]
    from_positions: dict[PartitionId, int | None]
    to_positions: dict[PartitionId, int] = field(default_factory=dict)
    """Computed from `records` when not given; give it only when already computed from them."""
    topic_ids: dict[PartitionId, str | None] = field(default_factory=dict)
    """The topic incarnation (Kafka topic ID) each partition's records were read from, stored with its position."""

    def __post_init__(self) -> None:
        if not self.to_positions:
            object.__setattr__(self, "to_positions", next_positions(self.records))
        missing = set(self.to_positions) - set(self.from_positions)
        if missing:
            raise ValueError(f"no from-position for {sorted(missing)}")

    def __len__(self) -> int:
        return len(self.records)

    def leader_epochs(self) -> dict[PartitionId, int | None]:
        """The leader epoch of each partition's last record (`leader_epoch_of`): stored with the position
        after it, so that a log truncated below that position is detected when it is read again."""
        return {pid: leader_epoch_of(run[-1]) for pid, run in ordered_runs(self.records)}
