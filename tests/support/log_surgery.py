"""A partition log that lost its tail, as a broker on one replica loses what it had not flushed when
its machine dies: the broker's data cut at a record batch boundary while it is down (tests only)."""

from __future__ import annotations

import struct
from pathlib import Path

from devstack.kafka_server import KafkaServer

# A record batch starts with its base offset (int64) and the length of the rest (int32), big-endian.
_BATCH_HEAD = struct.Struct(">qi")


def cut_partition_log(server: KafkaServer, topic: str, partition: int, at: int) -> int:
    """Kill the broker, cut the partition's log at the first batch starting at or after offset `at`,
    and start the broker again: it recovers the log (an unclean shutdown) and leads the partition in a
    new leader epoch. Returns the offset the log now ends at; raises when the log has no such batch."""
    server.stop(hard=True)
    folder = server.workdir / "data" / f"{topic}-{partition}"
    segments = sorted(folder.glob("*.log"))
    if len(segments) != 1:
        raise AssertionError(f"expected one segment in {folder}, found {[s.name for s in segments]}")
    cut = _batch_boundary(segments[0], at)
    with segments[0].open("r+b") as log:
        log.truncate(cut[1])
    for stale in [*folder.glob("*.index"), *folder.glob("*.timeindex"), *folder.glob("*.snapshot")]:
        stale.unlink()  # rebuilt by the broker's recovery from what is left
    server.restart()
    return cut[0]


def _batch_boundary(segment: Path, at: int) -> tuple[int, int]:
    """(base offset, byte position) of the first batch of `segment` whose base offset is `at` or more."""
    data = segment.read_bytes()
    position = 0
    while position + _BATCH_HEAD.size <= len(data):
        base, length = _BATCH_HEAD.unpack_from(data, position)
        if base >= at:
            return base, position
        position += _BATCH_HEAD.size + length
    raise AssertionError(f"{segment.name} has no record batch at or after offset {at}")
