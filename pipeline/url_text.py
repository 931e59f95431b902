"""A DATABASE_URL's password as the user wrote it, where libpq reads something else, kept out of messages.

A password with an unencoded '/', '@' or '"' is not where libpq looks for it: it reads part of it as a
port, a host or a database name (`postgresql://u:pa/ss@h/db` is host `u`, port `pa` and database
`ss@h/db`), so a message naming the server (`host:port/dbname`, or libpq's own "could not translate host
name") would show it. `scrub` masks, in a message, the parts of such a password that libpq took for the
host, port, database or user (every part when libpq cannot read the URL at all). A URL libpq reads as
written is left alone: a password that is also a database name does not hide it. Pure.
"""

from __future__ import annotations

import re
import urllib.parse

import psycopg
from psycopg.conninfo import conninfo_to_dict

MASK = "***"
SHORTEST_PART = 2  # a single character of a password says little, and masked alone would garble the message
_SEPARATORS = re.compile(r"[/@:\"'?#&]+")  # what libpq reads as the syntax of a URL or a DSN
_DSN_PASSWORD = re.compile(r"(?i)(?:^|\s)password\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+))")
_URL = re.compile(r"(?i)^\s*postgres(?:ql)?://")
_SHOWN = ("host", "hostaddr", "port", "dbname", "user")  # what messages name of a server


def written_passwords(url: str) -> set[str]:
    """What the text of `url` holds as a password: in a URL, what follows `user:` up to the last '@'
    before its query (and in the query, `password=`); in a DSN, `password=`, whose value may itself be
    a URL (`dbname=postgresql://u:p@h/d` then counts that URL's too)."""
    found: set[str] = set()
    for start in (match.end() for match in re.finditer("://", url)):
        authority = url[start:].split("?", 1)[0]
        userinfo = authority.rpartition("@")[0]
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
    if _URL.match(url):
        query = urllib.parse.parse_qs(url.partition("?")[2])
        found |= set(query.get("password", ()))
    else:
        found |= {re.sub(r"\\(.)", r"\1", quoted) or plain for quoted, plain in _DSN_PASSWORD.findall(url)}
    return {password for password in found if password}


def leaked_parts(url: str) -> set[str]:
    """The parts of `url`'s written passwords that libpq did not read as its password and that show up
    in what it read as the host, port, database or user (all of them when it cannot read `url`)."""
    try:
        params: dict[str, str | int | None] | None = conninfo_to_dict(url)
    except psycopg.ProgrammingError:  # not a connection string libpq can read at all
        params = None
    parsed = params.get("password") if params is not None else None
    misread = {p for p in written_passwords(url) if parsed not in (p, urllib.parse.unquote(p))}
    parts = {
        part for password in misread for part in (password, *_SEPARATORS.split(password)) if len(part) >= SHORTEST_PART
    }
    if params is None:
        return parts
    shown = "\n".join(str(params.get(key) or "") for key in _SHOWN)
    return {part for part in parts if part in shown}


def scrub(text: str, url: str) -> str:
    """`text` with every leaked part of `url`'s password (`leaked_parts`) replaced by ***."""
    for part in sorted(leaked_parts(url), key=len, reverse=True):
        text = text.replace(part, MASK)
    return text
