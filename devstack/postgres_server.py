"""A throwaway PostgreSQL 15 cluster from the machine's packages (Debian layout).

`initdb` refuses to run as root, so when we are root the server runs as the `postgres` user in a
directory that user owns. Authentication is `trust` on 127.0.0.1 only: this is a test server.

With `tls` (a devstack.tls.TestPki) the server also speaks TLS, and members of the NOLOGIN role
`microbatch_password_login` must come over TLS with a SCRAM password (pg_hba `hostssl ... scram-sha-256`;
`hostnossl ... reject`); every other role, the `postgres` superuser included, is trusted as without tls.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql

from devstack import DevstackError
from devstack.process import free_port, wait_for
from devstack.tls import TestPki

PG_MAJOR = "15"
DATABASE = "microbatch"
# With tls: members of this role must log in over TLS with a password (see the module docstring).
TLS_LOGIN_ROLE = "microbatch_password_login"


def pg_bindir() -> Path:
    """The PostgreSQL server binaries: $PG_BINDIR, Debian's layout, or whatever is on PATH."""
    candidates = [os.environ.get("PG_BINDIR", ""), f"/usr/lib/postgresql/{PG_MAJOR}/bin"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise DevstackError(
        f"PostgreSQL {PG_MAJOR} server binaries (initdb, pg_ctl) were not found: install them "
        f"(apt-get install postgresql-{PG_MAJOR}) or set PG_BINDIR, or set DATABASE_URL to a running server."
    )


def _as_server_user(argv: list[str]) -> list[str]:
    """Prefix `argv` so it runs as `postgres` when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def _check_reachable(workdir: Path) -> None:
    """The server user must be able to enter every parent of `workdir` (we run it as `postgres`)."""
    if os.geteuid() != 0:
        return
    for parent in workdir.parents:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise DevstackError(
                f"the postgres user cannot enter {parent} (mode {oct(parent.stat().st_mode & 0o777)}): "
                "put the PostgreSQL data under a directory others can traverse, e.g. /tmp"
            )


def _chown_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


@dataclass
class PostgresServer:
    """A running cluster started by `start_postgres`; `url` is a libpq URL for the test database.

    `tls` is the PKI the server was started with (None: no TLS, as before).
    """

    workdir: Path
    port: int
    tls: TestPki | None = None

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    @property
    def log(self) -> Path:
        return self.workdir / "run" / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = _as_server_user([str(pg_bindir() / "pg_ctl"), "-D", str(self.datadir), *args])
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        if check and result.returncode != 0:
            raise DevstackError(f"pg_ctl {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
        return result

    def running(self) -> bool:
        return self.pg_ctl("status", check=False).returncode == 0

    def start(self, timeout: float = 60.0) -> None:
        """Start the cluster (idempotent) and wait until it accepts connections."""
        if not self.running():
            options = f"-p {self.port} -k {self.workdir / 'run'} -c listen_addresses=127.0.0.1"
            self.pg_ctl("-l", str(self.log), "-o", options, "-w", "-t", str(int(timeout)), "start")
        wait_for(self.accepts_connections, timeout=timeout, what=f"PostgreSQL on port {self.port}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster; `mode` is pg_ctl's: smart, fast or immediate (a crash)."""
        if self.datadir.exists() and self.running():
            self.pg_ctl("-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def tls_url(
        self,
        user: str,
        password: str,
        database: str = DATABASE,
        *,
        sslmode: str = "verify-full",
        root_cert: Path | None = None,
        host: str = "127.0.0.1",
    ) -> str:
        """A libpq URL logging `user` in with `password` over TCP with `sslmode` (user, password and
        database percent-encoded). `sslrootcert` is `root_cert`, by default the server's own CA;
        raises DevstackError when neither exists (the server was started without tls)."""
        root = root_cert or (self.tls.ca_cert if self.tls is not None else None)
        if root is None:
            raise DevstackError("tls_url needs root_cert: this PostgreSQL server was started without tls")
        query = urlencode({"sslmode": sslmode, "sslrootcert": str(root)}, quote_via=quote)
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"postgresql://{credentials}@{host}:{self.port}/{quote(database, safe='')}?{query}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.admin_url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def version(self) -> str:
        with psycopg.connect(self.url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"


def _configure_tls(server: PostgresServer, tls: TestPki) -> list[str]:
    """Copy the server's certificate and key into the data directory (owned by the server user, the key
    0600 as PostgreSQL demands), put the password-login rules first in pg_hba.conf; return the settings."""
    copies = []
    for source, name in ((tls.server_cert, "server.crt"), (tls.server_key, "server.key")):
        target = server.datadir / name
        shutil.copyfile(source, target)
        target.chmod(0o600 if name == "server.key" else 0o644)
        _chown_to_server_user(target)
        copies.append(target)
    hba = server.datadir / "pg_hba.conf"
    rules = (
        f"# devstack (tls): members of {TLS_LOGIN_ROLE} need TLS and a password; these come first\n"
        f"hostssl   all  +{TLS_LOGIN_ROLE}  127.0.0.1/32  scram-sha-256\n"
        f"hostnossl all  +{TLS_LOGIN_ROLE}  127.0.0.1/32  reject\n"
    )
    hba.write_text(rules + hba.read_text())
    cert, key = copies
    return ["ssl = on", f"ssl_cert_file = '{cert}'", f"ssl_key_file = '{key}'"]


def start_postgres(
    workdir: Path, *, port: int | None = None, durable: bool = False, tls: TestPki | None = None
) -> PostgresServer:
    """initdb a new cluster under `workdir`, start it on a free port and create the test database.

    `durable=False` turns off fsync and synchronous commit: fine for tests, never for benchmarks of
    record (those pass durable=True and keep PostgreSQL's defaults). `tls` turns on TLS with that PKI's
    server certificate and creates the NOLOGIN role `microbatch_password_login`, whose members may only
    log in over TLS with a password (module docstring); without it nothing changes.
    """
    bindir = pg_bindir()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _check_reachable(workdir)
    _chown_to_server_user(workdir)
    server = PostgresServer(workdir, port or free_port(), tls)
    (workdir / "run").mkdir(exist_ok=True)
    _chown_to_server_user(workdir / "run")
    init = subprocess.run(
        _as_server_user(
            [
                str(bindir / "initdb"),
                "-D",
                str(server.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        ),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if init.returncode != 0:
        raise DevstackError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
    settings = [
        "max_connections = 200",
        "unix_socket_permissions = 0777",
        "log_min_messages = warning",
        "log_line_prefix = '%m [%p] '",
    ]
    if not durable:
        settings += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
    if tls is not None:
        settings += _configure_tls(server, tls)
    with (server.datadir / "postgresql.conf").open("a") as conf:
        conf.write("\n# devstack\n" + "\n".join(settings) + "\n")
    try:
        server.start()
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
            if tls is not None:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(TLS_LOGIN_ROLE)))
    except (DevstackError, psycopg.Error):
        server.stop("immediate")
        raise
    return server
