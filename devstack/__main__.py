"""`python -m devstack up|down|status|preflight`: the local services behind `make up` and `make down`.

`up` starts Kafka and PostgreSQL (and Prometheus with `--prometheus`) in the background under
`.devstack/`, writes `.devstack/env` (KAFKA_BOOTSTRAP_SERVERS=…, DATABASE_URL=…) and prints it.
`down` stops everything `up` started and removes the data. The env file is the contract.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from devstack import DevstackError
from devstack.containers import docker_available
from devstack.preflight import missing_tools
from devstack.process import pid_alive, pid_cmdline_contains, terminate

STATE_DIR = Path(".devstack")
State = dict[str, Any]  # {"kafka": {...}, "postgres": {...}, "prometheus": {...}, "env": {...}}


def _state_file(root: Path) -> Path:
    return root / "state.json"


def up(root: Path, *, with_prometheus: bool) -> dict[str, str]:
    """Start the services (idempotent: a running stack is reused) and return the env mapping."""
    from devstack.kafka_server import start_kafka  # noqa: PLC0415 - needs the venv's packages
    from devstack.postgres_server import PostgresServer, start_postgres  # noqa: PLC0415

    state = _read_state(root)
    if state and _stack_running(root, state):
        env = dict(state["env"])
        if with_prometheus and "PROMETHEUS_URL" not in env:
            env.update(_start_prometheus(root, state))
            state["env"] = env
            _write(root, state, env)
        return env
    down(root, quiet=True)
    problems = missing_tools()
    if problems:
        raise DevstackError(" ".join(problems))
    root.mkdir(parents=True, exist_ok=True)
    kafka = start_kafka(root / "kafka")
    try:
        postgres: PostgresServer = start_postgres(root / "postgres")
    except DevstackError:
        kafka.stop()
        raise
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "DATABASE_URL": postgres.url}
    state = {
        "kafka": {"pid": kafka.pid, "workdir": str(kafka.workdir), "port": kafka.port},
        "postgres": {"workdir": str(postgres.workdir), "port": postgres.port},
        "env": env,
    }
    if with_prometheus:
        env.update(_start_prometheus(root, state))
    _write(root, state, env)
    return env


def _start_prometheus(root: Path, state: State) -> dict[str, str]:
    from devstack.prometheus_server import start_prometheus  # noqa: PLC0415

    server = start_prometheus(root / "prometheus", targets=["127.0.0.1:9108"])
    state["prometheus"] = {"pid": server.pid, "workdir": str(server.workdir), "port": server.port}
    return {"PROMETHEUS_URL": server.url}


def _write(root: Path, state: State, env: dict[str, str]) -> None:
    _state_file(root).write_text(json.dumps(state, indent=2))
    (root / "env").write_text("".join(f"{key}={value}\n" for key, value in env.items()))


def _read_state(root: Path) -> State | None:
    try:
        loaded: State = json.loads(_state_file(root).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return loaded


def _stack_running(root: Path, state: State) -> bool:
    from devstack.postgres_server import PostgresServer  # noqa: PLC0415

    kafka_pid = int(state["kafka"]["pid"])
    postgres = PostgresServer(Path(state["postgres"]["workdir"]), int(state["postgres"]["port"]))
    return pid_alive(kafka_pid) and postgres.datadir.exists() and postgres.running()


def down(root: Path, *, quiet: bool = False) -> None:
    """Stop every service `up` started under `root` and delete their data. Safe to repeat."""
    state = _read_state(root)
    if state:
        for name in ("kafka", "prometheus"):
            entry = state.get(name)
            if entry and pid_cmdline_contains(int(entry["pid"]), entry["workdir"]):
                terminate(int(entry["pid"]), timeout=30.0)
        if "postgres" in state:
            from devstack.postgres_server import PostgresServer  # noqa: PLC0415

            postgres = PostgresServer(Path(state["postgres"]["workdir"]), int(state["postgres"]["port"]))
            try:
                postgres.stop("fast")
            except DevstackError as exc:
                print(f"warning: {exc}", file=sys.stderr)
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)
    if not quiet:
        print("devstack: stopped; nothing left running")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "preflight"])
    parser.add_argument("--prometheus", action="store_true", help="also start Prometheus")
    parser.add_argument("--dir", type=Path, default=STATE_DIR, help="state directory (default .devstack)")
    args = parser.parse_args(argv)
    try:
        if args.command == "preflight":
            problems = missing_tools()
            if problems and docker_available():
                print("devstack: local tools missing, but a Docker daemon answers: using Testcontainers")
                return 0
            for problem in problems:
                print(problem, file=sys.stderr)
            return 1 if problems else 0
        if args.command == "down":
            down(args.dir)
            return 0
        if args.command == "status":
            state = _read_state(args.dir)
            running = bool(state) and state is not None and _stack_running(args.dir, state)
            print("running" if running else "stopped")
            return 0 if running else 1
        env = up(args.dir, with_prometheus=args.prometheus)
    except DevstackError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1
    print(f"devstack: services are up; environment written to {args.dir / 'env'}")
    for key, value in env.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
