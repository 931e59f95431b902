"""Containers for the container tests, driven with the podman command line (tests/containers).

There is no systemd here, and podman schedules health checks with systemd timers: a container's health
stays `starting` until something runs the check. `Container.healthy()` runs it (`podman healthcheck
run`), as the timer would.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from devstack.containers import container_name
from devstack.engine import run


@dataclass
class Container:
    """One container, by name."""

    name: str

    @classmethod
    def named(cls, kind: str) -> Container:
        """A container to be, named under the session's prefix (tests/containers/conftest.py removes
        whatever is left under it at the end)."""
        return cls(container_name(kind))

    def start(self, image: str, *args: str, env: dict[str, str], options: tuple[str, ...] = ()) -> Container:
        """`podman run -d` on the host network (servers listen on 127.0.0.1 at the ports they are given).
        `env`'s values reach the container through podman's environment, never its command line."""
        names = [item for key in env for item in ("-e", key)]
        run("run", "-d", "--name", self.name, "--network", "host", *options, *names, image, *args, env=env)
        return self

    def inspect(self) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(run("inspect", self.name).stdout)
        return found[0]

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.inspect()["State"]
        return state

    def running(self) -> bool:
        return bool(self.state()["Running"])

    def healthy(self) -> bool:
        """Run the image's health check once; True when the container now reports `healthy`."""
        run("healthcheck", "run", self.name, check=False, timeout=60)
        health = self.state().get("Health") or self.state().get("Healthcheck") or {}
        return health.get("Status") == "healthy"

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return run("exec", self.name, *argv, check=False, timeout=60)

    def logs(self) -> str:
        found = run("logs", self.name, check=False, timeout=60)
        return found.stdout + found.stderr

    def remove(self) -> None:
        run("rm", "-f", "-t", "0", self.name, check=False, timeout=120)
