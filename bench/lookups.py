"""The lookups variant: `microbatch run` on the vendor-invoices pipeline (pipeline/builtin/vendor-invoices.toml),
whose flush finds or creates each event's vendor and item (two lookups, chained) before writing.

The dataset has the invoice dataset's size and mix, over 2,000 distinct (vendor, sku) pairs. Before
the timed run (after init-db, untimed) the reference tables receive 95% of the pairs the dataset
uses, as a long-running deployment would hold them: the run finds those and creates the other 5%.
Totals are verified per natural key (devstack.verify.compare_vendor_totals), and the reference
tables must hold each key exactly once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from bench.lab import Dataset, Lab
from bench.variants import Figures, run_microbatch
from consumer.vendor_workload import VendorWorkloadOptions, item_universe

PIPELINE = "vendor-invoices"
KNOWN_SHARE = 0.95  # of the pairs the dataset uses, created before the run
PAIRS = VendorWorkloadOptions.items  # distinct (vendor, sku) pairs: its same-items control has as many items


def preload(lab: Lab, count: int, *, seed: int) -> Dataset:
    """A vendor-invoices dataset of `count` events (the generator's 2,000 pairs over 8 vendors)."""
    return lab.preload("lookups", count, seed=seed, pipeline=PIPELINE)


def known_pairs(dataset: Dataset) -> list[tuple[str, str, str]]:
    """The first 95% (in the generator's fixed order) of the pairs the dataset's good events use, as
    (normalised vendor, normalised sku, description): what the reference tables hold before the run."""
    options = dataset.options
    if not isinstance(options, VendorWorkloadOptions):
        raise TypeError(f"the lookups variant drains a vendor-invoices dataset, not {dataset.pipeline}")
    used = {tuple(key.split("|")) for key in dataset.expected["inventory"]}
    pairs = [(*item.key, item.description) for item in item_universe(options.vendors, options.items)]
    pairs = [pair for pair in pairs if pair[:2] in used]
    return pairs[: round(len(pairs) * KNOWN_SHARE)]


def precreate(url: str, pairs: list[tuple[str, str, str]]) -> dict[str, Any]:
    """INSERT the vendors and items of `pairs` (normalised keys, as the lookups store them). No ANALYZE:
    the consumer meets the tables as a bulk load leaves them, before autovacuum's next analyze."""
    vendors = sorted({vendor for vendor, _, _ in pairs})
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO vendors (name) SELECT unnest(%s::text[])", (vendors,))
        conn.execute(
            "INSERT INTO items (vendor_id, sku, description) SELECT v.vendor_id, k.sku, k.description "
            "FROM unnest(%s::text[], %s::text[], %s::text[]) AS k(vendor, sku, description) "
            "JOIN vendors v ON v.name = k.vendor ORDER BY v.vendor_id, k.sku",
            ([p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]),
        )
    return {"vendors_before": len(vendors), "items_before": len(pairs)}


def run_lookups(lab: Lab, dataset: Dataset, *, label: str = "lookups", export: Path | None = None) -> Figures:
    """Drain `dataset` with `microbatch run` on the vendor-invoices pipeline, 95% of its pairs known.
    With `export`, its tables (items and vendors too) go there (bench/export.py)."""
    pairs = known_pairs(dataset)
    figures = run_microbatch(lab, dataset, {}, label=label, prepare=lambda url: precreate(url, pairs), export=export)
    figures["pairs"] = int(dataset.expected["items"])
    figures["pairs_created_in_run"] = figures["pairs"] - len(pairs)
    return figures
