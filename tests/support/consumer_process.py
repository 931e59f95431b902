"""`microbatch` as a real subprocess, so SIGKILL and SIGTERM are real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

MICROBATCH = Path(sys.executable).with_name("microbatch")


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


def run_cli(env: dict[str, str], *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run a short `microbatch` command and capture its output."""
    return subprocess.run(
        [str(MICROBATCH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
