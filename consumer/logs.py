"""Logging: one line per event worth logging, text or JSON, with secrets masked on the way out."""

from __future__ import annotations

import logging
import re
import sys
import urllib.parse
from datetime import UTC, datetime

import orjson

# password=…, secret: …, token … in key=value text, and user:password@ in URLs.
_SECRET_PAIRS = re.compile(r"(?i)\b([\w.-]*(?:password|passwd|secret|token|api[_.-]?key)[\w.-]*)(\s*[=:]\s*)(\S+)")
_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+):[^@\s]+@", re.IGNORECASE)


# Credentials of the settings (`keep_out`), longest first: masked wherever they show up.
_KNOWN: list[str] = []
_SHORTEST = 3  # a shorter credential is not masked: it would mask a part of every message
_SHORTEST_PART = 4  # nor a shorter part of a credential standing alone
_DSN_PASSWORD = re.compile(r"(?i)\bpassword\s*=\s*(?:'((?:[^'\\]|\\.)*)'|([^\s&]+))")


def keep_out(*secrets: str, database_url: str = "") -> None:
    """Mask, from now on (instead of what an earlier call named), `secrets` and whatever in
    `database_url` may be its password as the user wrote it.

    A password with an unencoded '/', '@' or '"' is not where libpq looks: it reads part of it as a
    port, a host or a database name, or quotes a part of it in a parse error, and a message that names
    the server (`host:port/dbname`) would show it. So the password is taken from the text as written:
    in a URL, what follows `user:` up to the last '@' (as written and percent-decoded); in a DSN,
    `password=`. Any part of it that shows up in a message is masked (`mask_secrets`)."""
    found = set(secrets)
    for start in (m.end() for m in re.finditer("://", database_url)):
        userinfo = database_url[start:].rpartition("@")[0]
        if ":" in userinfo:
            found |= {password := userinfo.split(":", 1)[1], urllib.parse.unquote(password)}
    found |= {re.sub(r"\\(.)", r"\1", quoted) or plain for quoted, plain in _DSN_PASSWORD.findall(database_url)}
    _KNOWN[:] = sorted({s for s in found if len(s) >= _SHORTEST}, key=len, reverse=True)  # one settings per process


def _mask_parts(text: str, secret: str) -> str:
    """`text` with each run of it that is a part of `secret` (of _SHORTEST_PART characters or more, or
    the whole of a shorter secret) replaced by ***."""
    shortest = min(_SHORTEST_PART, len(secret))
    out, i = [], 0
    while i < len(text):
        j = i
        while j < len(text) and text[i : j + 1] in secret:
            j += 1
        if j - i >= shortest:
            out.append("***")
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def mask_secrets(text: str) -> str:
    """Replace secret values in `text` with ***."""
    for secret in _KNOWN:
        text = _mask_parts(text, secret)
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
