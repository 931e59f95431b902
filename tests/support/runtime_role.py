"""The consumer under test runs as a least-privilege runtime role, as in production; `init-db` as the owner.

One cluster-wide role, made once per session (`ensure_runtime_role`). `service_env` points DATABASE_URL at
it (over verified TLS when the server has the test CA) and keeps the owner's URL beside it;
`as_owner` turns an `init-db` of that environment into the owner's `init-db --grant-to` the runtime role,
which is what an operator runs.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

RUNTIME_ROLE = "microbatch_runtime"
RUNTIME_PASSWORD = "runtime-Pw-Kq83x"  # noqa: S105 - a recognisable test value, grepped for by the leak test
# Members must log in over TLS with a password, when the server was started with the test CA.
PASSWORD_LOGIN_GROUP = "microbatch_password_login"  # noqa: S105 - a role name
OWNER_ENV, RUNTIME_ENV = "TEST_OWNER_DATABASE_URL", "TEST_RUNTIME_DATABASE_URL"


def ensure_runtime_role(admin_url: str) -> None:
    """Create the runtime role (idempotent): LOGIN with a password, no other attribute, no privilege."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (RUNTIME_ROLE,)).fetchone() is None:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                    sql.Identifier(RUNTIME_ROLE), sql.Literal(RUNTIME_PASSWORD)
                )
            )
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PASSWORD_LOGIN_GROUP,)).fetchone():
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(PASSWORD_LOGIN_GROUP), sql.Identifier(RUNTIME_ROLE))
            )


def runtime_url(database_url: str, ca: Path | None) -> str:
    """`database_url` as the runtime role; with `ca`, over TLS verifying the server's certificate and name."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    info.update(user=RUNTIME_ROLE, password=RUNTIME_PASSWORD)
    info.pop("sslmode", None)
    if ca is not None:
        info.update(sslmode="verify-full", sslrootcert=str(ca))
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


def as_owner(env: dict[str, str], args: tuple[str, ...]) -> tuple[dict[str, str], tuple[str, ...]]:
    """For `init-db` with the runtime role's URL of `service_env`: the owner's URL, and `--grant-to` the
    runtime role. Anything else (another command, a URL a test chose) is returned as it is."""
    if not args or args[0] != "init-db" or env.get("DATABASE_URL") != env.get(RUNTIME_ENV) or OWNER_ENV not in env:
        return env, args
    grant = () if "--grant-to" in args else ("--grant-to", RUNTIME_ROLE)
    return {**env, "DATABASE_URL": env[OWNER_ENV]}, (*args, *grant)
