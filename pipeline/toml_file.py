"""A TOML file a user names (a pipeline, a config file), read so that every way it can fail says why in
one line: a directory, a file without read permission, a file too large to be one (/dev/zero), bytes that
are not UTF-8, text that is not TOML, an integer longer than Python converts or a nesting deeper than the
parser recurses."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pipeline.bounded_read import read_at_most

# A pipeline or settings file is a few KB. Reading no more than this keeps a path named by mistake (/dev/zero,
# a log file, a disk image) from being read for ever or filling the memory; far above any real file.
MAX_BYTES = 16 * 1024 * 1024


class TomlError(Exception):
    """The file exists but cannot be read as TOML; str() says why, after the file's name."""


def read_toml(path: Path) -> dict[str, Any]:
    """The document at `path`. Raises FileNotFoundError when there is no such file, TomlError otherwise
    (also when it holds more than MAX_BYTES)."""
    try:
        data = read_at_most(path, MAX_BYTES)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TomlError(f"cannot be read: {exc.strerror or exc}") from None
    if data is None:
        raise TomlError(f"is larger than {MAX_BYTES:,} bytes: not a pipeline or settings file (a few KB)")
    try:
        # Lines end as Path.read_text (universal newlines) ended them: a lone CR too.
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        raise TomlError(f"is not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlError(f"is not valid TOML: {exc}") from None
    except (ValueError, RecursionError) as exc:  # what tomllib raises beyond its own errors
        raise TomlError(f"is not valid TOML here: {exc}") from None
