"""What a table must look like: the shapes DDL creates and schema checks compare against. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """A column with its SQL type and nullability, for DDL and schema checks."""

    name: str
    type: str
    not_null: bool
    default: str | None = None


@dataclass(frozen=True)
class TableShape:
    """What a table must look like: columns plus the unique key the upsert conflicts on."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
