"""The local container engine: podman, configured for this kind of machine, and its Docker API socket.

Machines without a Docker daemon can still run containers with Debian's podman as root. Two things
stand in the way, and both are handled here rather than by hand:

- The sandbox forbids setting resource limits, and podman sets default ones on every container
  ("error setting rlimit type 7: operation not permitted"): `configure()` writes
  `default_ulimits = []` into /etc/containers/containers.conf (`make tools` calls it, as root).
- Docker API clients (testcontainers, docker-compose v1) need a socket: `api_socket()` serves one
  with `podman system service` for as long as the block runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack import DevstackError
from devstack.process import terminate

CONTAINERS_CONF = Path("/etc/containers/containers.conf")
ULIMITS = "default_ulimits = []"


def podman() -> str | None:
    """The podman binary, or None when it is not installed."""
    return shutil.which("podman")


def why_unavailable() -> str | None:
    """None when podman can run containers here; otherwise one sentence saying why not."""
    binary = podman()
    if binary is None:
        return "podman is not installed (make tools installs it as root with apt-get)"
    if os.geteuid() != 0:
        return "podman runs containers here only as root (rootless needs user namespaces this sandbox lacks)"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (make tools installs it): the base images are built with it"
    result = subprocess.run([binary, "info", "--format", "{{.Host.OCIRuntime.Name}}"], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    if result.returncode != 0:
        return f"podman info failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}"
    return None


def configure(conf: Path = CONTAINERS_CONF) -> bool:
    """Make podman leave resource limits alone (see the module docstring). Returns True when the file
    changed. Idempotent; an existing `[containers]` table gains the line, other tables are kept."""
    text = conf.read_text() if conf.exists() else ""
    if re.search(r"^\s*default_ulimits\s*=", text, flags=re.MULTILINE):
        return False
    comment = "# microbatch (make tools): this sandbox forbids setting rlimits, and podman sets defaults on every run"
    table = r"^(\s*\[\s*containers\s*\][ \t]*(?:#.*)?)$"  # the header, also spaced or with a comment
    if re.search(table, text, flags=re.MULTILINE):
        text = re.sub(table, rf"\1\n{comment}\n{ULIMITS}", text, count=1, flags=re.MULTILINE)
    else:
        text = f"{text.rstrip()}\n\n[containers]\n{comment}\n{ULIMITS}\n".lstrip()
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(text)
    return True


@contextmanager
def api_socket(timeout: float = 30.0) -> Iterator[str]:
    """Serve the Docker API from podman on a fresh unix socket; yields its DOCKER_HOST value."""
    binary = podman()
    if binary is None:
        raise DevstackError("podman is not installed")
    where = Path(tempfile.mkdtemp(prefix="microbatch-podman-", dir="/tmp"))
    socket = where / "podman.sock"
    with (where / "service.log").open("w") as log:
        process = subprocess.Popen([binary, "system", "service", "--time=0", f"unix://{socket}"],
                                   stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                told = (where / "service.log").read_text(errors="replace").strip()
                raise DevstackError(f"podman system service did not open {socket}: {told[-500:]}")
            time.sleep(0.05)
        yield f"unix://{socket}"
    finally:
        terminate(process.pid, timeout=10, reap=process.poll)
        process.wait(timeout=10)
        shutil.rmtree(where, ignore_errors=True)


def run(
    *args: str, timeout: float = 300.0, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`podman ARGS`, output captured; a failure (with `check`) raises DevstackError with its stderr.
    `env` is added to podman's environment: `-e NAME` then passes a value without putting it on the
    command line (where `ps` shows it), which is how secrets reach containers."""
    binary = podman()
    if binary is None:
        raise DevstackError("podman is not installed")
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, check=False,
                            env={**os.environ, **env} if env else None)  # fmt: skip
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise DevstackError(f"podman {' '.join(args[:2])} failed ({result.returncode}): {detail[-1500:]}")
    return result
