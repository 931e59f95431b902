"""The consumer as it was before the performance work, drained side by side with this checkout's.

The consumer's CPU per event moves with the machine as much as with the code: the same commit measured
4.02 µs on one day and 5.04 the day before, and 3.8 to 7.6 within one day. A figure from another day
cannot say whether a change halved it; a ratio measured in one run can. So the benchmark also drains
its main dataset with the consumer of `BASELINE` (the last commit before the performance work began;
the first change made for it came right after) in every repetition, right before the current one, and
reports the ratio of the two consumers' CPU per event.

`checkout(rev)` is shared with `make bench-ab`: a git worktree of the commit under /tmp with its own
virtual environment, built from that commit's lock file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.lab import Dataset, Lab
from bench.variants import Figures, run_microbatch

ROOT = Path(__file__).resolve().parents[1]
UV = ROOT / ".tools" / "bin" / "uv"
BASELINE = "9a5b9ef31045fceb66006edfbbf133a62b39041f"


class MissingCommit(RuntimeError):
    """The commit to check out is not in this clone."""


def checkout(rev: str) -> Path:
    """A worktree of `rev` with its own venv (reused when it exists); returns its `microbatch` executable.
    Raises MissingCommit when this clone does not have `rev` (a shallow clone)."""
    found = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if found.returncode != 0:
        raise MissingCommit(f"commit {rev} is not in this clone (a shallow clone?): `git fetch --unshallow` brings it")
    commit = found.stdout.strip()
    where = Path(tempfile.gettempdir()) / f"microbatch-ab-{commit[:12]}"
    if not where.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(where), commit], cwd=ROOT, check=True)
    subprocess.run(
        [str(UV), "sync", "--frozen", "--quiet", "--no-dev", "--python", sys.executable],
        cwd=where,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(where / ".venv"), "UV_PYTHON_DOWNLOADS": "never"},
        check=True,
    )
    return where / ".venv" / "bin" / "microbatch"


def run_baseline(lab: Lab, dataset: Dataset, binary: Path, *, export: Path | None = None) -> Figures:
    """Drain `dataset` with the baseline's consumer (`binary`, from `checkout(BASELINE)`), defaults, verified
    like every run."""
    return run_microbatch(lab, dataset, {}, label="baseline", binary=binary, export=export)
