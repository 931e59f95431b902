"""Reading a file a user names, no further than a limit: a path named by mistake (/dev/zero, a log, a
disk image) must neither be read for ever nor fill the memory."""

from __future__ import annotations

from pathlib import Path


def read_at_most(path: Path, limit: int) -> bytes | None:
    """The bytes of the file at `path`, or None when it holds more than `limit` (reading stops at
    `limit + 1` bytes). Raises OSError as opening and reading it do."""
    with path.open("rb") as file:
        data = file.read(limit + 1)
    return None if len(data) > limit else data
