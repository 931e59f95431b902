"""Where the consumer's CPU goes: one extra drain of the main dataset, sampled by py-spy.

The run is not one of the measured repetitions (sampling slows it a little); its figure is a share of
the samples, per stage of the loop, and what that share is in µs per event. py-spy sees the Python
threads only: librdkafka's own threads are in the measured consumer CPU of the variants, not here.
Only the thread holding the GIL is sampled (py-spy --gil): without that, a thread waiting for the GIL,
a lock or a condition was sometimes counted as busy, and the samples added up to a third more than
the CPU the process used.

Stages, from the sampled stacks (the first rule that matches a sample, in this order):
  writer thread        the flush transaction: COPY, upserts, positions, commit (psycopg)
  field checks         the compiled row readers and each type's check (pipeline/row_compiler,
                       struct_reader, field_types)
  JSON and decode      msgspec or orjson and the decode loop around the field checks (pipeline/decode)
  COPY encoding        psycopg's binary COPY encoder, ahead of the write (pipeline/copydata)
  messages → records   confluent-kafka messages into Records (consumer/messages)
  window bookkeeping   positions, the window, telemetry for each consume() batch (the rest of accept)
  Kafka consume()      the loop's own frame: consume() itself (librdkafka → Python messages) and the step
  handover             handing a window to the writer and accounting for its outcome (consumer/handover)
  other                metrics server, housekeeping, the garbage collector, ...
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.lab import Dataset, Lab
from bench.variants import run_microbatch

RATE_HZ = 200
PY_SPY = Path(sys.executable).parent / "py-spy"  # a dev dependency of the project (uv.lock)

Rule = Callable[[list[str]], bool]


def _any(*prefixes: str) -> Rule:
    return lambda frames: any(frame.startswith(prefixes) for frame in frames)


def _inside(*needles: str) -> Rule:
    return lambda frames: any(needle in frame for frame in frames for needle in needles)


STAGES: tuple[tuple[str, Rule], ...] = (
    ("writer thread (flush transaction)", _any("WriterThread._write", "_worker (concurrent/futures")),
    ("field checks", _inside("<row reader", "<struct row reader", "(pipeline/field_types.py")),
    ("JSON and decode loop", _any("Decoder.decode")),
    ("COPY encoding", _any("CopyEncoder.encode")),
    ("messages → records", _any("to_records")),
    ("window bookkeeping", _any("RunLoop._accept")),
    ("Kafka consume() and the loop", lambda frames: frames[-1].startswith("RunLoop.step")),
    ("handover", _any("Handover.")),
    ("other", lambda frames: True),
)


def stage_of(frames: list[str]) -> str:
    """The stage a sampled stack (outermost frame first) is counted in."""
    return next(name for name, rule in STAGES if rule(frames))


def summarise(lines: Iterable[str], *, events: int, rate_hz: int = RATE_HZ) -> dict[str, Any]:
    """py-spy's raw output (`frame;frame;... count` per line) → samples per stage, share and µs/event."""
    counts: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            counts[stage_of(stack.split(";"))] += int(count)
    samples = sum(counts.values())
    per_sample_us = 1e6 / rate_hz
    return {
        "samples": samples,
        "rate_hz": rate_hz,
        "events": events,
        "sampled_us_per_event": round(samples * per_sample_us / events, 2) if events else None,
        "stages": {
            name: {
                "share": round(counts[name] / samples, 3),
                "us_per_event": round(counts[name] * per_sample_us / events, 2),
            }
            for name, _ in STAGES
            if samples and events
        },
    }


@contextmanager
def sampled(pid: int, out: Path, rate_hz: int = RATE_HZ) -> Iterator[None]:
    """py-spy samples `pid` (whichever of its Python threads holds the GIL) while the block runs; raw
    stacks go to `out` when it stops (SIGINT is py-spy's documented way to stop and write)."""
    if not PY_SPY.exists():
        raise RuntimeError(f"{PY_SPY} is missing: `make setup` installs the dev dependencies, py-spy among them")
    spy = subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
         "--rate", str(rate_hz), "--threads", "--nonblocking", "--gil"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        _, stderr = spy.communicate(timeout=60)
        if spy.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy failed (exit {spy.returncode}): {stderr.decode(errors='replace')[-800:]}")


def profile_consumer(lab: Lab, dataset: Dataset) -> dict[str, Any]:
    """Drain `dataset` once more with default settings under py-spy; the stages' shares of the samples,
    with the run's own figures (it is verified like every run)."""
    out = lab.workdir / "profile.raw.txt"
    figures = run_microbatch(lab, dataset, {}, label="profile", observe=lambda pid: sampled(pid, out))
    with out.open() as raw:
        profile = summarise(raw, events=dataset.count)
    profile["run"] = {k: figures[k] for k in ("events_per_s", "cpu_us_per_event", "correct") if k in figures}
    return profile


def markdown(profile: dict[str, Any]) -> list[str]:
    """The report's section on the profile (empty without one); says why when the profile failed."""
    if not profile:
        return []
    lines = ["## Where the consumer's CPU goes", ""]
    if "error" in profile:
        return [*lines, f"The profiled run failed: {profile['error']}", ""]
    run = profile.get("run", {})
    measured = run.get("cpu_us_per_event", {}).get("consumer")
    lines += [
        f"py-spy, {profile['samples']:,} samples at {profile['rate_hz']} Hz over one more drain of the main dataset "
        f"({profile['events']:,} events, {run.get('events_per_s', 0):,} events/s under the sampler, "
        f"{'verified' if run.get('correct') else 'NOT verified'}; its process used {measured} µs of CPU per event). "
        "py-spy sees the Python thread holding the GIL only, not librdkafka's threads, and its samples add up to "
        f"{profile['sampled_us_per_event']} µs per event: read the shares, and their µs as that share of the "
        "run's measured CPU. Stages as bench/profile.py defines them.",
        "",
        "| stage | share of samples | ≈ µs/event |",
        "|---|---|---|",
    ]
    for name, stage in profile["stages"].items():
        micros = "—" if measured is None else f"{stage['share'] * measured:.2f}"
        lines.append(f"| {name} | {stage['share']:.1%} | {micros} |")
    return [*lines, ""]
