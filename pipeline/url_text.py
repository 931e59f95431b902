"""A DATABASE_URL's password as the user wrote it, where libpq reads something else, kept out of messages.

A password with an unencoded '/', '@' or '"' is not where libpq looks for it: it reads part of it as a
port, a host or a database name (`postgresql://u:pa/ss@h/db` is host `u`, port `pa` and database
`ss@h/db`), so a message naming the server (`host:port/dbname`, or libpq's own "could not translate host
name") would show it. `scrub` masks, in a message, what the URL's text holds as a password and libpq
did not read as one, and each part of it between such characters. A URL libpq reads as written is left
alone: a password that equals a database or host name does not mask it. Pure.
"""

from __future__ import annotations

import re
import urllib.parse

import psycopg
from psycopg.conninfo import conninfo_to_dict

MASK = "***"
SHORTEST_PART = 2  # a single character of a password says little, and masked alone would garble the message
_SEPARATORS = re.compile(r"[/@:\"'?#&]+")  # what libpq reads as the syntax of a URL or a DSN
_DSN_PASSWORD = re.compile(r"(?i)\bpassword\s*=\s*(?:'((?:[^'\\]|\\.)*)'|([^\s&]+))")


def written_passwords(url: str) -> set[str]:
    """What the text of `url` holds as a password: in a URL, what follows `user:` up to the last '@'
    (as written and percent-decoded), wherever a `scheme://` starts; in a DSN, `password=`."""
    found: set[str] = set()
    for start in (match.end() for match in re.finditer("://", url)):
        userinfo = url[start:].rpartition("@")[0]
        if ":" in userinfo:
            password = userinfo.split(":", 1)[1]
            found |= {password, urllib.parse.unquote(password)}
    found |= {re.sub(r"\\(.)", r"\1", quoted) or plain for quoted, plain in _DSN_PASSWORD.findall(url)}
    return {password for password in found if password}


def misread_passwords(url: str) -> set[str]:
    """The passwords `url`'s text holds that libpq does not read as its password (none for a URL it reads
    as written)."""
    try:
        parsed = conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:  # not a connection string libpq can read at all
        parsed = None
    return {password for password in written_passwords(url) if password != parsed}


def scrub(text: str, url: str) -> str:
    """`text` with every misread password of `url`, and each part of one, replaced by ***."""
    parts: set[str] = set()
    for password in misread_passwords(url):
        parts |= {password, *(part for part in _SEPARATORS.split(password) if len(part) >= SHORTEST_PART)}
    for part in sorted(parts, key=len, reverse=True):
        text = text.replace(part, MASK)
    return text
