"""The consumer as it was before the performance work, drained side by side with this checkout's.

The consumer's CPU per event moves with the machine as much as with the code: the same commit measured
4.02 µs on one day and 5.04 the day before, and 3.8 to 7.6 within one day. A figure from another day
cannot say whether a change halved it; two consumers measured side by side, on the same data in the same
run, mostly can (what is left is the noise between two neighbouring runs). So the benchmark also drains
its main dataset with the consumer of `BASELINE` in every repetition, right before this checkout's plain
run, and reports the median over the repetitions of the ratio of the two consumers' CPU per event.
`BASELINE` is the last commit before the work on performance against the peers began (durability =
replay came first, then the CPU work).

`checkout(rev)` is shared with `make bench-ab`: a git worktree of the commit under /tmp with its own
virtual environment, built from that commit's lock file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.lab import Dataset, Lab
from bench.variants import Figures, run_microbatch

ROOT = Path(__file__).resolve().parents[1]
UV = ROOT / ".tools" / "bin" / "uv"
BASELINE = "9a5b9ef31045fceb66006edfbbf133a62b39041f"


class CheckoutFailed(RuntimeError):
    """A commit's consumer could not be made ready: the message says why."""


class MissingCommit(CheckoutFailed):
    """The commit to check out is not in this clone."""


def _run(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    """`command`, or CheckoutFailed with the end of what it wrote to stderr."""
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True, **options)
    except (OSError, subprocess.CalledProcessError) as error:
        said = error.stderr.strip()[-400:] if isinstance(error, subprocess.CalledProcessError) else str(error)
        raise CheckoutFailed(f"{' '.join(command[:3])} failed: {said}") from error


def checkout(rev: str) -> Path:
    """A worktree of `rev` with its own venv (reused when it exists); returns its `microbatch` executable.
    Raises MissingCommit when this clone does not have `rev` (a shallow clone), CheckoutFailed when git or
    uv cannot make it ready."""
    try:
        commit = _run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=ROOT).stdout.strip()
    except CheckoutFailed as error:
        if isinstance(error.__cause__, OSError):  # no git at all: not a question of this clone
            raise
        raise MissingCommit(
            f"commit {rev} is not in this clone (a shallow clone?): `git fetch --unshallow` brings it"
        ) from error
    where = Path(tempfile.gettempdir()) / f"microbatch-ab-{commit[:12]}"
    if not where.exists():
        _run(["git", "worktree", "prune"], cwd=ROOT)  # a worktree whose directory was removed (/tmp cleaned)
        _run(["git", "worktree", "add", "--detach", str(where), commit], cwd=ROOT)
    _run(
        [str(UV), "sync", "--frozen", "--quiet", "--no-dev", "--python", sys.executable],
        cwd=where,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(where / ".venv"), "UV_PYTHON_DOWNLOADS": "never"},
    )
    return where / ".venv" / "bin" / "microbatch"


def run_baseline(lab: Lab, dataset: Dataset, binary: Path, *, export: Path | None = None) -> Figures:
    """Drain `dataset` with the baseline's consumer (`binary`, from `checkout(BASELINE)`), defaults, verified
    like every run."""
    return run_microbatch(lab, dataset, {}, label="baseline", binary=binary, export=export)
