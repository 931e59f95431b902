"""A TOML file a user names (a pipeline, a config file), read so that every way it can fail says why in
one line: a directory, a file without read permission, bytes that are not UTF-8, text that is not TOML,
an integer longer than Python converts or a nesting deeper than the parser recurses."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


class TomlError(Exception):
    """The file exists but cannot be read as TOML; str() says why, after the file's name."""


def read_toml(path: Path) -> dict[str, Any]:
    """The document at `path`. Raises FileNotFoundError when there is no such file, TomlError otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TomlError(f"is not UTF-8 text (byte {exc.start})") from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TomlError(f"cannot be read: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlError(f"is not valid TOML: {exc}") from None
    except (ValueError, RecursionError) as exc:  # what tomllib raises beyond its own errors
        raise TomlError(f"is not valid TOML here: {exc}") from None
