"""`microbatch` as a real subprocess, so SIGKILL and SIGTERM are real."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.runtime_role import as_owner

MICROBATCH = Path(sys.executable).with_name("microbatch")
# The consumer's last words on a clean shutdown (consumer/runner.py).
FINAL_COUNTS = re.compile(r"shut down cleanly: (\d+) flushes, (\d+) rows written, (\d+) duplicates skipped")
# Any Python warning category in the output (the processes run with PYTHONWARNINGS=error).
WARNING = re.compile(r"\b[A-Z][A-Za-z]*Warning\b")


class ConsumerProcess:
    """One `microbatch run` process with its own log file."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path) -> None:
        self.env = env
        self.args = args
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ConsumerProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(MICROBATCH), *self.args], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.running():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye."""
        if self.running():
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        self.signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after `timeout` seconds."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def final_counts(self) -> dict[str, int] | None:
        """The counters of the shutdown line; None when the process did not shut down cleanly."""
        found = FINAL_COUNTS.search(self.output())
        if found is None:
            return None
        flushes, rows, duplicates = (int(group) for group in found.groups())
        return {"flushes": flushes, "rows written": rows, "duplicates skipped": duplicates}

    def warnings(self) -> list[str]:
        """Lines of the output that name a Python warning."""
        return [line for line in self.output().splitlines() if WARNING.search(line)]


def run_cli(env: dict[str, str], *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run a short `microbatch` command and capture its output; a Python warning in it fails the test.
    `init-db` of `service_env` runs as the owner and grants the runtime role (tests.support.runtime_role)."""
    env, args = as_owner(env, args)
    result = subprocess.run(
        [str(MICROBATCH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    warned = [line for line in (result.stdout + result.stderr).splitlines() if WARNING.search(line)]
    assert warned == [], f"`microbatch {' '.join(args)}` printed warnings: {warned[:3]}"
    return result
