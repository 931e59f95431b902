"""Logging: one line per event worth logging, text or JSON, with secrets masked on the way out."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime

import orjson

# password=…, secret: …, token … in key=value text, and user:password@ in URLs.
_SECRET_PAIRS = re.compile(r"(?i)\b([\w.-]*(?:password|passwd|secret|token|api[_.-]?key)[\w.-]*)(\s*[=:]\s*)(\S+)")
_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+):[^@\s]+@", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """Replace secret values in `text` with ***."""
    text = _URL_CREDENTIALS.sub(r"\1:***@", text)
    return _SECRET_PAIRS.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


class MaskingFormatter(logging.Formatter):
    """Formats, then masks: secrets cannot leak through arguments or exception text."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (masked), exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = mask_secrets(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once for the process (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
