"""Process plumbing shared by the local servers: free ports, deadlines, detached starts, stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from devstack import DevstackError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    alive: Callable[[], bool] | None = None,
) -> float:
    """Poll `condition` until it holds; return the seconds it took.

    Raises DevstackError naming `what` when `timeout` passes, or at once when `alive` says the
    process being waited for has exited.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if condition():
            return time.monotonic() - start
        if alive is not None and not alive():
            raise DevstackError(f"{what}: the process exited before it became ready")
        if time.monotonic() >= deadline:
            raise DevstackError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(interval)


def start_detached(argv: Sequence[str], *, log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session with stdout and stderr appended to `log`.

    The child survives the caller's exit (so `make up` can return) and is not hit by the caller's
    terminal signals.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def pid_cmdline_contains(pid: int, needle: str) -> bool:
    """True when `pid`'s command line mentions `needle`: guards against signalling a reused pid."""
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, UnicodeDecodeError):
        return False


def terminate(pid: int, *, timeout: float, reap: Callable[[], object] | None = None) -> None:
    """SIGTERM `pid`, wait up to `timeout` seconds, then SIGKILL. Never raises for a gone process."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not pid_alive(pid):
            if reap is not None:  # it may have exited between the reap above and this check
                reap()
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if reap is not None:
        reap()
