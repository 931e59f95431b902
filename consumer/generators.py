"""The event generators of the example pipelines, chosen by the pipeline's `name` (`microbatch produce`).

A generator knows its pipeline's event format and the totals the tables must reach, so only the
built-in examples have one; any other pipeline is refused before Kafka is touched.
"""

from __future__ import annotations

from dataclasses import replace

from consumer.vendor_workload import VendorInvoiceWorkload, VendorWorkloadOptions
from consumer.workload import InvoiceWorkload, WorkloadOptions

GENERATED_PIPELINES = ("invoices", "vendor-invoices")


class NoGenerator(Exception):
    """The pipeline has no event generator; str() names the pipelines that have one."""


def workload_options(
    pipeline: str,
    *,
    count: int,
    seed: int = 1,
    bad_ratio: float = 0.0,
    duplicate_ratio: float = 0.0,
    items: int | None = None,
) -> WorkloadOptions:
    """Options for the generator of the pipeline named `pipeline`; `items` None keeps the generator's
    default (1000 invoice items, 2000 vendor items). Raises NoGenerator for a pipeline without one."""
    if pipeline not in GENERATED_PIPELINES:
        raise NoGenerator(
            f"pipeline {pipeline!r} has no event generator: `microbatch produce` makes events for the "
            f"example pipelines {', '.join(GENERATED_PIPELINES)} only"
        )
    options = (VendorWorkloadOptions if pipeline == "vendor-invoices" else WorkloadOptions)(
        count, seed, bad_ratio, duplicate_ratio
    )
    return options if items is None else replace(options, items=items)


def new_workload(options: WorkloadOptions) -> InvoiceWorkload:
    """The generator the options are for: vendor-invoice options make vendor-invoice events."""
    if isinstance(options, VendorWorkloadOptions):
        return VendorInvoiceWorkload(options)
    return InvoiceWorkload(options)
