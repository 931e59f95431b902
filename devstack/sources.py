"""Which server each test session uses: explicit environment, then Testcontainers, then local processes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum

KAFKA_ENV = "KAFKA_BOOTSTRAP_SERVERS"
DATABASE_ENV = "DATABASE_URL"


class Source(Enum):
    """Where a service comes from."""

    ENVIRONMENT = "environment"
    TESTCONTAINERS = "testcontainers"
    LOCAL = "local process"


def choose_source(
    env: Mapping[str, str],
    variable: str,
    docker_available: Callable[[], bool],
) -> Source:
    """Pick the source of one service.

    An explicit, non-empty `variable` in `env` always wins; then `MICROBATCH_SERVICES` = `containers`
    or `local` decides (the container test pass sets it); `MICROBATCH_NO_DOCKER=1` skips the
    daemon probe; otherwise Testcontainers when a Docker daemon answers, else local processes.
    `docker_available` is only called when it matters (it may take seconds).
    """
    if env.get(variable, "").strip():
        return Source.ENVIRONMENT
    forced = env.get("MICROBATCH_SERVICES", "").strip()
    if forced in {"containers", "local"}:
        return Source.TESTCONTAINERS if forced == "containers" else Source.LOCAL
    if env.get("MICROBATCH_NO_DOCKER", "") not in {"1", "true", "yes"} and docker_available():
        return Source.TESTCONTAINERS
    return Source.LOCAL
