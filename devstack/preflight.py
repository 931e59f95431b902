"""What the local services need from the machine, checked before anything starts.

Each problem is one sentence naming what is missing and how to get it: `make test` prints these
instead of a stack trace. Imports only the standard library, so it runs before the venv exists.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PG_BINDIR = Path("/usr/lib/postgresql/15/bin")


def missing_tools(env: dict[str, str] | None = None) -> list[str]:
    """One sentence per missing prerequisite; empty when the local services can start.

    A service given explicitly through the environment (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL)
    needs nothing locally.
    """
    env = dict(os.environ) if env is None else env
    problems: list[str] = []
    if not env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        if shutil.which("java") is None:
            problems.append(
                "Java 17+ is missing (the local Kafka broker runs on the JVM): install it with "
                "'apt-get install openjdk-17-jre-headless' or set KAFKA_BOOTSTRAP_SERVERS."
            )
        if shutil.which("mvn") is None:
            problems.append(
                "Maven is missing (it fetches the Kafka broker's jars from Maven Central): install it "
                "with 'apt-get install maven' or set KAFKA_BOOTSTRAP_SERVERS."
            )
    if not env.get("DATABASE_URL", "").strip():
        bindir = Path(env.get("PG_BINDIR", "") or PG_BINDIR)
        if not (bindir / "initdb").exists() and shutil.which("initdb") is None:
            problems.append(
                "PostgreSQL 15 server binaries are missing (initdb, pg_ctl): install them with "
                "'apt-get install postgresql-15' or set DATABASE_URL."
            )
    return problems
