"""`make bench-ab AGAINST=<rev>`: this checkout's drain rate against another commit's, interleaved in one run.

The other commit is checked out in a git worktree under /tmp with its own virtual environment (from
its own lock file); both drain the same preloaded topic, alternately (the order flips every round),
each into a fresh database, with default settings. Prints every run, the medians and the ratios
new / old of the drain rate and of the consumer's and PostgreSQL's CPU per event; every run is checked for
correctness (exact totals). Nothing is committed or written in this checkout.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from rich.console import Console

from bench.baseline import CheckoutFailed, checkout
from bench.lab import Lab
from bench.variants import MICROBATCH, run_microbatch

console = Console(stderr=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench-ab", description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the other commit (any git revision)")
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        old = checkout(args.against)
    except CheckoutFailed as error:  # a commit this clone lacks, or git or uv failing: said, not a traceback
        parser.error(str(error))
    lab = Lab.start(console)
    rates: dict[str, list[float]] = {"old": [], "new": []}
    cpu: dict[str, list[float]] = {"old": [], "new": []}  # the consumer's CPU µs per event
    pg: dict[str, list[float]] = {"old": [], "new": []}  # PostgreSQL's: a saving there counts as much
    try:
        dataset = lab.preload("ab", args.events, seed=7)
        for round_ in range(args.rounds):
            order = [("old", old), ("new", MICROBATCH)]
            for name, binary in order if round_ % 2 == 0 else reversed(order):
                figures = run_microbatch(lab, dataset, {}, label=f"{name}{round_}", binary=binary)
                if not figures["correct"]:
                    raise SystemExit(f"{name} (round {round_ + 1}) wrote wrong totals")
                rates[name].append(figures["events_per_s"])
                cpu[name].append(figures["cpu_us_per_event"]["consumer"])
                pg[name].append(figures["cpu_us_per_event"]["postgres"])
                console.print(
                    f"round {round_ + 1} {name}: {figures['events_per_s']:,} events/s, "
                    f"consumer CPU {cpu[name][-1]} µs/event, PostgreSQL CPU {pg[name][-1]} µs/event"
                )
    finally:
        lab.stop()
    old_rate, new_rate = statistics.median(rates["old"]), statistics.median(rates["new"])
    print(f"old {args.against}: median {old_rate:,.0f} events/s (runs {rates['old']})")
    print(f"new (this checkout): median {new_rate:,.0f} events/s (runs {rates['new']})")
    print(f"new / old = {new_rate / old_rate:.3f}")
    old_cpu, new_cpu = round(statistics.median(cpu["old"]), 2), round(statistics.median(cpu["new"]), 2)
    print(f"consumer CPU µs/event: old {old_cpu} (runs {cpu['old']}), new {new_cpu} (runs {cpu['new']})")
    print(f"consumer CPU new / old = {new_cpu / old_cpu:.3f}")
    old_pg, new_pg = round(statistics.median(pg["old"]), 2), round(statistics.median(pg["new"]), 2)
    print(f"PostgreSQL CPU µs/event: old {old_pg} (runs {pg['old']}), new {new_pg} (runs {pg['new']})")
    print(f"PostgreSQL CPU new / old = {new_pg / old_pg:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
