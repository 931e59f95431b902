"""What a consume() batch holds besides records: its errors, sorted by what the run loop does with them.

Fatal errors and a missing ACL end the loop (raised here); a fetch position the broker refused places
the partition again; a record batch the client could not read halts the partition there, what was read
before it written first; anything else is logged. Pure but for the log.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message

from pipeline.records import OFFSET_OF, PartitionId, Record

log = logging.getLogger("microbatch.loop")
# The broker refused a fetch position (auto.offset.reset = error): the partition is placed again.
OUT_OF_RANGE = frozenset({KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE})
UNKNOWN_TOPIC = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.UNKNOWN_TOPIC_ID, KafkaError._UNKNOWN_TOPIC})
# A missing ACL: no retry mends it, and warning about it at every poll would hide it. The loop ends (what
# is buffered was never stored, so it is read again) and the command exits 2 with one line.
NOT_AUTHORIZED = frozenset({KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED})
# The client could not read a record batch at the error's offset (librdkafka's message set reader). A
# failed CRC check (check.crcs) or an unknown message format: it skips the batch and reads on past it. A
# codec it does not know or a decompression that failed: it fetches the batch again and again, an error
# each time. Either way the partition halts there (Seeker.unreadable), what was read before it written.
UNREADABLE = frozenset({KafkaError._BAD_MSG, KafkaError._BAD_COMPRESSION, KafkaError._NOT_IMPLEMENTED})


class KafkaRefused(Exception):
    """The broker refused the consumer's principal (a missing ACL); str() says what to grant."""


@dataclass
class SortedErrors:
    """The errors of one consume() batch the loop acts on, per partition."""

    refused: dict[PartitionId, str] = field(default_factory=dict)  # fetch position refused: why
    # A record batch that could not be read: the first one's offset (where reading stopped), and why.
    unreadable: dict[PartitionId, tuple[int | None, str]] = field(default_factory=dict)
    unknown_topic: bool = False  # a topic is unknown: deleted, and maybe re-created

    def any(self) -> bool:
        """True when a partition is to be placed again or halted."""
        return bool(self.refused or self.unreadable)


def sort_errors(errors: Sequence[tuple[Message, KafkaError]], topics: Sequence[str], group: str) -> SortedErrors:
    """The batch's errors the loop acts on; raises KafkaException for a fatal one and KafkaRefused for a
    missing ACL; logs the others."""
    out = SortedErrors()
    for message, error in errors:
        if error.fatal():
            raise KafkaException(error)
        if error.code() in NOT_AUTHORIZED:
            where = f" for topic {message.topic()}" if message.topic() else ""
            raise KafkaRefused(
                f"Kafka refused the consumer ({error.str()}{where}): grant its principal READ on the topics "
                f"{', '.join(topics)} and on its group {group}"
            )
        if error.code() in OUT_OF_RANGE and message.topic() is not None:
            out.refused[(message.topic() or "", message.partition() or 0)] = error.str()
        elif error.code() in UNREADABLE and message.topic() is not None and message.partition() is not None:
            out.unreadable.setdefault(
                (message.topic() or "", message.partition() or 0), (message.offset(), error.str())
            )
        else:
            out.unknown_topic = out.unknown_topic or error.code() in UNKNOWN_TOPIC
            log.warning("kafka: %s", error.str())
    for pid in out.unreadable:
        # librdkafka read on past the batch from the wrong bytes (its skip ends short of the batch's end,
        # in 2.16) and fetched at an offset made of them: that refusal says nothing of the partition.
        out.refused.pop(pid, None)
    return out


def before(run: list[Record], offset: int | None) -> list[Record]:
    """The records of `run` (ascending offsets) before `offset`; none when the offset is not known."""
    if offset is None or offset < 0:
        return []
    return run[: bisect_left(run, offset, key=OFFSET_OF)]
