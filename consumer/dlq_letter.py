"""A dead letter's bytes: the original key, value and headers plus ours, made to fit the topic. Pure.

A rejected message is dead-lettered whole when it fits the limit (the smaller of the producer's
`message.max.bytes` and the topic's `max.message.bytes`). When it does not, the largest of its value,
key and original headers is left out, then the next, until it fits; each part left out is described
by headers so that it can still be found and checked: `dlq.value.omitted=true`, `dlq.value.bytes`
(its length) and `dlq.value.sha256` (hex), the same for the key, and `dlq.headers.omitted=true`. The
original stays in its source topic at `dlq.original.topic/partition/offset`. Original headers the
Kafka client cannot read (a name that is not UTF-8) are left out the same way, with
`dlq.headers.unreadable=true` as well.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline.records import Rejection, headers_of

DLQ_PREFIX = "dlq."
MAX_ERROR_MESSAGE = 500
# What a record costs on the wire beyond its key, value and headers, as upper bounds: the record
# batch header (61 bytes; a topic's max.message.bytes limits whole batches) and the record's own
# fields (length, attributes, timestamp and offset deltas, key and value lengths, header count: 36
# bytes at most, as librdkafka counts them against message.max.bytes); and per header two lengths.
BATCH_OVERHEAD = 61
RECORD_OVERHEAD = 36
HEADER_OVERHEAD = 10

OutHeaders = list[tuple[str, str | bytes | None]]
# Headers that say a part was left out: an incoming header of one of these names is never kept, so
# that a letter that kept its value cannot claim otherwise.
OMISSION_HEADERS = frozenset(
    {f"dlq.{part}.{fact}" for part in ("value", "key") for fact in ("omitted", "bytes", "sha256")}
    | {"dlq.headers.omitted", "dlq.headers.unreadable"}
)
# What a letter says of original headers the Kafka client could not read (a name that is not UTF-8):
# they are left out, and the original stays in its source topic.
UNREADABLE_HEADERS = {"dlq.headers.omitted": "true", "dlq.headers.unreadable": "true"}


@dataclass(frozen=True)
class Letter:
    """What is produced for one rejection: key, value, headers, and which parts were left out."""

    key: bytes | None
    value: bytes | None
    headers: OutHeaders
    omitted: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Bytes this letter takes in a record batch of its own (an upper bound)."""
        return wire_size(self.key, self.value, self.headers)


def wire_size(key: bytes | None, value: bytes | None, headers: OutHeaders) -> int:
    """An upper bound of the bytes one record takes in a batch of its own."""
    size = BATCH_OVERHEAD + RECORD_OVERHEAD + len(key or b"") + len(value or b"")
    for name, data in headers:
        size += HEADER_OVERHEAD + len(name.encode()) + len(data or b"")
    return size


def dead_letter_headers(
    rejection: Rejection, group: str, attempts: int, failed_at: datetime, *, omitted: dict[str, str] | None = None
) -> OutHeaders:
    """Original headers (minus any `dlq.*` we set) followed by ours, all values UTF-8 text."""
    record = rejection.record
    ours: dict[str, str] = {
        "dlq.original.topic": record.topic,
        "dlq.original.partition": str(record.partition),
        "dlq.original.offset": str(record.offset),
        "dlq.reason": rejection.reason.value,
        "dlq.error.class": rejection.error_class,
        "dlq.error.message": rejection.message[:MAX_ERROR_MESSAGE],
        "dlq.consumer.group": group,
        "dlq.failed_at": failed_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "dlq.attempts": str(attempts),
    }
    if rejection.sqlstate:
        ours["dlq.error.sqlstate"] = rejection.sqlstate
    ours.update(omitted or {})
    kept: OutHeaders = []
    if "dlq.headers.omitted" not in ours:
        originals = headers_of(record)
        if originals is None:  # the Kafka client cannot read them (pipeline.records.read_headers)
            ours |= UNREADABLE_HEADERS
        else:
            kept = [(name, value) for name, value in originals if name not in ours and name not in OMISSION_HEADERS]
    return kept + [(name, value.encode()) for name, value in ours.items()]


def _described(part: str, data: bytes) -> dict[str, str]:
    return {
        f"dlq.{part}.omitted": "true",
        f"dlq.{part}.bytes": str(len(data)),
        f"dlq.{part}.sha256": hashlib.sha256(data).hexdigest(),
    }


def fit(rejection: Rejection, group: str, attempts: int, failed_at: datetime, limit: int) -> Letter | None:
    """The dead letter of `rejection` in at most `limit` bytes: whole if it fits; otherwise without its
    largest parts (value, key, original headers), one at a time, until it fits. None when even our own
    headers do not fit."""
    record = rejection.record
    key, value = record.key, record.value
    originals = headers_of(record) or ()
    original_headers = sum(HEADER_OVERHEAD + len(name.encode()) + len(data or b"") for name, data in originals)
    sizes = {"value": len(value or b""), "key": len(key or b""), "headers": original_headers}
    # Largest first; on a tie the value goes before the key, the key before the headers.
    order = [part for part in sorted(sizes, key=lambda part: -sizes[part]) if sizes[part]]
    omitted: dict[str, str] = {}
    left_out: list[str] = []
    while True:
        letter = Letter(
            None if "key" in left_out else key,
            None if "value" in left_out else value,
            dead_letter_headers(rejection, group, attempts, failed_at, omitted=omitted),
            tuple(left_out),
        )
        if letter.size <= limit:
            return letter
        if len(left_out) == len(order):
            return None
        part = order[len(left_out)]
        left_out.append(part)
        if part == "headers":
            omitted["dlq.headers.omitted"] = "true"
        else:
            omitted.update(_described(part, (value if part == "value" else key) or b""))
