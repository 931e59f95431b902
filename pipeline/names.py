"""The names a pipeline file may use: SQL identifiers, SQL types, Kafka topics. Pure.

Every name that becomes an SQL identifier is checked here and later composed only through
`psycopg.sql.Identifier`; types are spliced into DDL, so only plain names from a fixed list pass.
"""

from __future__ import annotations

import re

# \Z, not $: $ also matches before a final newline ("items\n").
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")
RESERVED_PREFIX = "_mb"


def check_identifier(name: str, what: str) -> str:
    """Return `name` when it is a safe lower-case SQL identifier; raise ValueError naming `what`."""
    if not IDENTIFIER.match(name):
        raise ValueError(
            f"{what} {name!r} is not a safe identifier: use lower-case letters, digits and _, "
            "starting with a letter or _, at most 63 characters"
        )
    if name.startswith(RESERVED_PREFIX):
        raise ValueError(f"{what} {name!r} starts with {RESERVED_PREFIX!r}, which microbatch reserves")
    return name


SQL_TYPES = re.compile(
    r"^(smallint|integer|bigint|numeric(\(\d{1,4}(,\d{1,4})?\))?|real|double precision|text|boolean"
    r"|uuid|date|timestamp with time zone|timestamptz)\Z"
)


def check_sql_type(name: str) -> str:
    """Accept only plain type names from a fixed list: a type is spliced into DDL, never a value."""
    if not SQL_TYPES.match(name):
        raise ValueError(f"unsupported SQL type {name!r}")
    return name


def check_topic(topic: str) -> None:
    if not re.match(r"^[A-Za-z0-9._-]{1,249}\Z", topic) or topic in {".", ".."}:
        raise ValueError(f"{topic!r} is not a valid Kafka topic name")
