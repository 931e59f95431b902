"""Natural keys known to have a committed reference row: a window whose keys are all known skips its
lookups' statements. Used by the writer thread only.

Most windows of a steady stream carry keys seen before; the find-or-create statement then does
nothing but cost PostgreSQL a scan, an anti-join and a sort of the window. A key joins the set once
a transaction that wrote a row carrying it has committed: its reference row exists then, and
microbatch never deletes one. The ids themselves are never cached: the flush statement always joins
the reference tables, so a cached key can never put a wrong id in a row.

Should someone delete a reference row anyway, the flush finds no id for its key and the raw
insert fails on the NOT NULL id column (init-db creates it so; only create lookups whose id reaches
the raw table are cached): that is bad data to the writer, which forgets every known key (`forget`)
before it bisects, and a single row always looks up, so the retried rows create the row anew.
The set is bounded: when it holds `max_keys` keys of one lookup, that lookup's are dropped. It is
also dropped whenever the writer opens a new connection: the server may have restarted and lost its
latest commits (synchronous_commit off), reference rows with them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pipeline.lookup_spec import Lookup
from pipeline.spec import PipelineSpec


class KnownKeys:
    """Per lookup, the natural keys (as staged: normalised where the lookup normalises) known to exist."""

    def __init__(self, spec: PipelineSpec, staging_columns: Sequence[str], max_keys: int) -> None:
        self.max_keys = max_keys
        normalised = spec.references.normalised()
        place = {column: index for index, column in enumerate(staging_columns)}
        columns: dict[str, list[int]] = {}
        for lookup in spec.lookups:
            found: list[int] = []
            for source in lookup.key.values():
                if source in columns:  # an earlier lookup's id: that lookup's own natural key decides it
                    found += columns[source]
                else:
                    found.append(place[normalised.get((source, lookup.normalize), source)])
            columns[lookup.name] = found
        # Only create lookups whose id reaches a raw column (directly or through a chain) are cached:
        # a row deleted by hand then fails the write instead of passing silently. A find-only lookup
        # always looks up: the reference table, not microbatch, decides what exists.
        # Its id itself, not one of its columns (`item.description`): only the id's column is NOT NULL.
        reaches = {c.field for c in spec.raw.columns.values() if c.field is not None and "." not in c.field}
        for lookup in reversed(spec.lookups):
            if lookup.name in reaches:
                reaches.update(lookup.key.values())
        self._key_of: dict[str, Callable[[tuple[Any, ...]], Any]] = {
            lookup.name: operator.itemgetter(*columns[lookup.name])
            for lookup in spec.lookups
            if lookup.create and lookup.name in reaches
        }
        self._known: dict[str, set[Any]] = {name: set() for name in self._key_of}

    @property
    def enabled(self) -> bool:
        return self.max_keys > 0

    def all_known(self, lookup: Lookup, rows: Sequence[tuple[Any, ...]], lo: int, hi: int) -> bool:
        """True when every row in [lo, hi) carries a key of `lookup` known to have a reference row."""
        if not self.enabled or lookup.name not in self._key_of:
            return False
        # map/issuperset: the per-row work stays in C (this runs for every window of a steady stream).
        return self._known[lookup.name].issuperset(map(self._key_of[lookup.name], rows[lo:hi]))

    def committed(self, rows: Sequence[tuple[Any, ...]], written: Iterable[int]) -> None:
        """The rows at indexes `written` were written by a transaction that has committed."""
        if not self.enabled:
            return
        written_rows = list(map(rows.__getitem__, written))
        for name, key_of in self._key_of.items():
            known = self._known[name]
            known.update(map(key_of, written_rows))
            if len(known) > self.max_keys:
                known.clear()  # bounded: start over rather than grow without limit

    def forget(self) -> None:
        """Drop every known key (a write failed on bad data: a reference row may be gone)."""
        for known in self._known.values():
            known.clear()
