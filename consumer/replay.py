"""`microbatch dlq replay`: re-drive dead letters to their source topic once the cause is fixed.

Reads the dead-letter topic from the beginning up to the high watermarks taken at the start (so the
run is bounded even while new dead letters arrive), keeps the messages that match the filters,
and produces each one with its original key, value and headers (our `dlq.*` headers removed) plus
`dlq.replayed_from = <dlq topic>/<partition>/<offset>`. Each original message (by
`dlq.original.topic/partition/offset` and the sha256 of its value: a re-created topic reuses
coordinates, so two letters at the same coordinates with different values are two messages) is sent
at most once per run: the dead-letter topic may hold two copies of it (a retried flush); the extra
copies are counted and skipped. A dead letter whose
value or key was omitted (too large for the dead-letter topic) cannot be replayed: without its key the
message would land on another partition, with a null key. It is counted, and where its original is (its
source topic, partition and offset) is reported instead. One whose original headers were omitted is
replayed without them. A letter that cannot be produced at all (a foreign letter naming a topic no
client can name) fails the run once the others were sent. Nothing is committed to
the dead-letter topic's consumer group: a replay can be repeated; the pipeline's dedupe key makes a
repeated good event harmless, and one that is still bad is dead-lettered again.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumer.deadletter import DLQ_PREFIX, header_dict
from consumer.kafka_clients import made
from pipeline.records import read_headers


class ReplayError(Exception):
    """The replay could not complete; str() says what went wrong (no stack trace for users)."""


@dataclass(frozen=True)
class ReplayFilter:
    """Which dead letters to replay; None means no restriction."""

    reasons: frozenset[str] | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, headers: dict[str, str]) -> bool:
        if self.reasons is not None and headers.get("dlq.reason") not in self.reasons:
            return False
        if self.since is None and self.until is None:
            return True
        try:
            failed_at = datetime.fromisoformat(headers.get("dlq.failed_at", ""))
        except ValueError:
            return False
        if failed_at.tzinfo is None:  # ours are UTC; a foreign letter's bare time is read as the filters' are
            failed_at = failed_at.replace(tzinfo=UTC)
        return (self.since is None or failed_at >= self.since) and (self.until is None or failed_at < self.until)


Original = tuple[str, int, int]
Identity = tuple[str, int, int, str]  # an original's coordinates and the sha256 of its value


# The parts of a message a dead letter must hold for it to be replayed from there.
REPLAYED_PARTS = ("value", "key")
# Produce raises these for a message no client can send (a topic name with a NUL, an invalid name).
_UNSENDABLE = (ValueError, TypeError, KafkaException)
FULL_QUEUE_WAIT_S = 0.05  # between two tries of a produce the local queue had no room for


@dataclass(frozen=True)
class Omitted:
    """A dead letter without its value or key: where it is, and where its original is."""

    letter: str  # <dlq topic>/<partition>/<offset>
    original: Original | None
    size: str  # the value's: dlq.value.bytes when it was omitted
    sha256: str
    parts: tuple[str, ...] = ("value",)  # what it was sent without, of REPLAYED_PARTS


@dataclass
class ReplaySummary:
    """`matched`: letters that pass the filters; `selected`: of those, the ones (to be) replayed, the
    others being extra copies of a message already selected (`copies`) or letters without their value
    (`omitted`); `replayed`: selected and acknowledged by the target."""

    scanned: int = 0
    matched: int = 0
    selected: int = 0
    replayed: int = 0
    copies: int = 0
    omitted: list[Omitted] = field(default_factory=list)
    by_reason: Counter[str] = field(default_factory=Counter)
    by_target: Counter[str] = field(default_factory=Counter)


def identity_of(headers: dict[str, str], value: bytes | None) -> Identity | None:
    """The message a dead letter holds: its coordinates and the sha256 (hex) of its value, given by
    `dlq.value.sha256` when the letter left the value out. None when its headers name no original."""
    original = original_of(headers)
    if original is None:
        return None
    if headers.get("dlq.value.omitted") == "true":
        return (*original, headers.get("dlq.value.sha256", "?"))
    return (*original, hashlib.sha256(value or b"").hexdigest())


def omitted_parts(headers: dict[str, str]) -> tuple[str, ...]:
    """The parts of REPLAYED_PARTS a dead letter was sent without (too large for its topic)."""
    return tuple(part for part in REPLAYED_PARTS if headers.get(f"dlq.{part}.omitted") == "true")


def _omitted(message: Message, headers: dict[str, str], dlq_topic: str, parts: tuple[str, ...]) -> Omitted:
    """What the run reports of a letter it cannot replay (`parts` omitted)."""
    if "value" in parts:
        size, digest = headers.get("dlq.value.bytes", "?"), headers.get("dlq.value.sha256", "?")
    else:
        value = message.value() or b""
        size, digest = str(len(value)), hashlib.sha256(value).hexdigest()
    letter = f"{dlq_topic}/{message.partition()}/{message.offset()}"
    return Omitted(letter, original_of(headers), size, digest, parts)


def _produce(  # noqa: PLR0917 - one call site, the run's own state
    producer: Producer, target: str, message: Message, dlq_topic: str, deadline: float,
    delivered: Callable[[KafkaError | None, Message], None], failures: list[str],
) -> bool:  # fmt: skip
    """Hand one replayed message to the producer, waiting while its local queue is full (ReplayError at
    `deadline`). False, with the reason in `failures`, when no client can send it: the run goes on, and
    fails once the others were sent."""
    headers = replay_headers(message, dlq_topic)
    while True:
        try:
            producer.produce(target, key=message.key(), value=message.value(), headers=headers, on_delivery=delivered)
            break
        except BufferError:
            if time.monotonic() > deadline:
                raise ReplayError("the producer's local queue stayed full: messages not replayed") from None
            producer.poll(FULL_QUEUE_WAIT_S)
        except _UNSENDABLE as exc:
            where = f"{dlq_topic}/{message.partition()}/{message.offset()}"
            failures.append(f"dead letter {where} cannot be sent to {target!r}: {exc}")
            return False
    producer.poll(0)
    return True


def original_of(headers: dict[str, str]) -> Original | None:
    """The coordinates of the message a dead letter holds (None when its headers do not say)."""
    try:
        return (headers["dlq.original.topic"], int(headers["dlq.original.partition"]),
                int(headers["dlq.original.offset"]))  # fmt: skip
    except (KeyError, ValueError):
        return None


def replay_headers(message: Message, dlq_topic: str) -> list[tuple[str, str | bytes | None]]:
    """The original headers without ours, plus where this message was replayed from."""
    kept: list[tuple[str, str | bytes | None]] = [
        (name, value) for name, value in read_headers(message.headers) or () if not name.startswith(DLQ_PREFIX)
    ]
    kept.append(("dlq.replayed_from", f"{dlq_topic}/{message.partition()}/{message.offset()}".encode()))
    return kept


def _ends(reader: Consumer, topic: str) -> dict[int, int]:
    """High watermark of every non-empty partition of `topic`, taken now."""
    metadata = reader.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise ReplayError(f"dead-letter topic {topic} does not exist")
    ends = {}
    for partition in metadata.partitions:
        low, high = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        if high > low:
            ends[partition] = high
    return ends


def _read_until(reader: Consumer, topic: str, ends: dict[int, int], timeout_s: float) -> Iterator[Message]:
    """Every message of `topic` below `ends`, from the beginning; bounded by `timeout_s`."""
    pending = dict(ends)
    reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise ReplayError(f"dead-letter topic not read to its end within {timeout_s:.0f} s")
        for message in reader.consume(500, 1.0):
            partition, offset = message.partition() or 0, message.offset() or 0
            if message.error() is not None or partition not in pending or offset >= pending[partition]:
                continue
            if offset + 1 >= pending[partition]:
                del pending[partition]
            yield message


def replay(
    consumer_config: dict[str, str | int | bool],
    producer_config: dict[str, str | int | bool],
    dlq_topic: str,
    selection: ReplayFilter,
    *,
    to_topic: str | None = None,
    dry_run: bool = False,
    timeout_s: float = 300.0,
) -> ReplaySummary:
    """Replay matching dead letters; returns what was scanned, matched and (unless dry_run) replayed."""
    config = {**consumer_config, "group.id": f"microbatch-dlq-replay-{uuid.uuid4().hex[:8]}",
              "enable.auto.commit": False, "enable.partition.eof": False}  # fmt: skip
    reader = made(Consumer, config)
    producer = None if dry_run else made(Producer, producer_config)
    summary = ReplaySummary()
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err.str())

    seen: set[Identity] = set()
    omitted: dict[Identity | str, Omitted] = {}  # by original (by letter when it names none)
    deadline = time.monotonic() + timeout_s
    try:
        for message in _read_until(reader, dlq_topic, _ends(reader, dlq_topic), timeout_s):
            summary.scanned += 1
            # Letters are ours, but anyone may write to the topic: headers it cannot read name no original.
            headers = header_dict(read_headers(message.headers) or ())
            target = to_topic or headers.get("dlq.original.topic")
            if not selection.matches(headers) or not target:
                continue
            summary.matched += 1
            original = identity_of(headers, message.value())
            if original is not None and original in seen:
                summary.copies += 1
                continue
            if parts := omitted_parts(headers):
                found = _omitted(message, headers, dlq_topic, parts)
                if (original or found.letter) in omitted:
                    summary.copies += 1
                omitted.setdefault(original or found.letter, found)
                continue
            if producer is not None and not _produce(producer, target, message, dlq_topic, deadline, delivered,
                                                     failures):  # fmt: skip
                continue  # not selected: a later copy of it is tried in its turn
            if original is not None:
                seen.add(original)
            summary.selected += 1
            summary.by_reason[headers.get("dlq.reason", "unknown")] += 1
            summary.by_target[target] += 1
        # A message with an omitted copy and a whole one was replayed from the whole one.
        summary.copies += sum(1 for found in omitted if found in seen)
        summary.omitted = [letter for found, letter in omitted.items() if found not in seen]
        if producer is not None:
            remaining = producer.flush(60)
            if failures or remaining:
                first = failures[0] if failures else "timed out"
                raise ReplayError(f"{len(failures) + remaining} message(s) not replayed: {first}")
            summary.replayed = summary.selected
    finally:
        reader.close()
    return summary
