"""What a pipeline's names refer to once it has lookups: event fields, lookup ids, `lookup.column`. Pure.

A raw column's `field` and a lookup's key name either an event field or a lookup: `"item"` is the id
of lookup `item`, `"item.sku"` a column of its reference row (its key and `set` columns). The rules
checked here: lookup names are new, keys read required fields or earlier lookups whose id is never
NULL, `set` reads fields, `normalize` has a text key to act on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pipeline.lookup_spec import Lookup, Normalizer

NORMALISED_PREFIX = "_mb_norm"


class FieldLike(Protocol):
    """What is needed of a declared field (pipeline.spec.FieldSpec)."""

    required: bool
    default: Any

    def sql_type(self) -> str: ...


class References:
    """The fields and lookups of one pipeline, and what each name refers to."""

    def __init__(self, fields: Mapping[str, FieldLike], lookups: Sequence[Lookup]) -> None:
        self.fields = fields
        self.lookups = {lookup.name: lookup for lookup in lookups}
        self._order = list(lookups)

    def field_required(self, name: str) -> bool:
        field = self.fields[name]
        return field.required or field.default is not None

    def key_type(self, lookup: Lookup, column: str) -> str:
        """The SQL type of a key column of `lookup`'s reference table: its source's."""
        source = lookup.key[column]
        earlier = self.lookups.get(source)
        return earlier.id.sql_type if earlier is not None else self.fields[source].sql_type()

    def normalised(self) -> dict[tuple[str, tuple[Normalizer, ...]], str]:
        """Each (text field, normalize steps) that a lookup key reads → the staging column holding
        the normalised value (decoded ahead: pipeline.decode), in declaration order."""
        found: dict[tuple[str, tuple[Normalizer, ...]], str] = {}
        for lookup in self._order:
            for column, source in lookup.key.items():
                if lookup.normalize and source in self.fields and self.key_type(lookup, column) == "text":
                    found.setdefault((source, lookup.normalize), f"{NORMALISED_PREFIX}{len(found)}")
        return found

    def value_type(self, reference: str) -> str:
        """The SQL type of a field, a lookup's id (`name`), or a reference column (`name.column`)."""
        name, _, column = reference.partition(".")
        if name in self.fields:
            return self.fields[name].sql_type()
        lookup = self.lookups[name]
        if not column or column == lookup.id.column:
            return lookup.id.sql_type
        if column in lookup.key:
            return self.key_type(lookup, column)
        return self.fields[lookup.set_columns[column]].sql_type()

    def value_required(self, reference: str) -> bool:
        """True when what `reference` names (see value_type) is never NULL in a written row."""
        name, _, column = reference.partition(".")
        if name in self.fields:
            return self.field_required(name)
        lookup = self.lookups[name]
        # Set columns hold what the event that created the row carried, which may have been nothing.
        return lookup.id_required and column not in lookup.set_columns

    def problem(self, reference: str) -> str | None:
        """Why a raw column cannot read `reference` (None: it can)."""
        name, dot, column = reference.partition(".")
        if not dot and name in self.fields:
            return None
        lookup = self.lookups.get(name)
        if lookup is None:
            return f"unknown field {'or lookup ' if self.lookups else ''}{reference!r}"
        if dot and column not in lookup.columns():
            return (
                f"{reference!r}: lookup {name!r} has no column {column!r} (its columns: {', '.join(lookup.columns())})"
            )
        return None

    def check(self) -> None:
        """Raise ValueError for the first lookup that breaks a rule (see the module docstring)."""
        earlier: dict[str, Lookup] = {}
        for lookup in self._order:
            where = f"lookup {lookup.name!r}"
            if lookup.name in self.fields or lookup.name in earlier:
                raise ValueError(f"{where}: the name is already used by a field or an earlier lookup")
            for column, source in lookup.key.items():
                self._check_key(where, column, source, earlier)
            for column, source in lookup.set_columns.items():
                if source not in self.fields:
                    raise ValueError(f"{where} set column {column!r} reads unknown field {source!r}")
            if lookup.normalize and not any(self.key_type(lookup, column) == "text" for column in lookup.key):
                raise ValueError(f"{where}: normalize applies to text key columns, and this lookup has none")
            earlier[lookup.name] = lookup

    def _check_key(self, where: str, column: str, source: str, earlier: dict[str, Lookup]) -> None:
        if source in earlier:
            if not earlier[source].id_required:
                raise ValueError(
                    f'{where} key {column!r} reads lookup {source!r}, whose id may be null (on_missing = "null"): '
                    "a key must always have a value"
                )
        elif source not in self.fields:
            later = " (lookups run in order: declare it first)" if source in self.lookups else ""
            raise ValueError(f"{where} key {column!r} reads unknown field or earlier lookup {source!r}{later}")
        elif not self.field_required(source):
            raise ValueError(
                f"{where} key {column!r} reads optional field {source!r}: a key must always have a value "
                "(make the field required or give it a default)"
            )
