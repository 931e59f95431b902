"""A real single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) on the JVM.

The jars come from Maven Central through `devstack/kafka/pom.xml` and are cached under
`$MICROBATCH_CACHE` (default `~/.cache/microbatch`), so only the first start on a machine downloads.

With a `KafkaSecurity` the broker also listens on SASL_SSL (SCRAM-SHA-512, the PKI's certificate) and,
by default, authorizes with the StandardAuthorizer: the PLAINTEXT and CONTROLLER listeners stay
unauthenticated (principal User:ANONYMOUS, a super user, for test set-up and the broker itself), the
SCRAM users get only what ACLs grant (devstack/kafka_acls.py).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from devstack import DevstackError
from devstack.process import (
    free_port,
    pid_alive,
    pid_cmdline_contains,
    start_detached,
    terminate,
    wait_for,
)
from devstack.tls import TestPki

KAFKA_VERSION = "4.1.1"
POM = Path(__file__).with_name("kafka") / "pom.xml"
STARTUP_TIMEOUT_S = 90.0

# log4j2: warnings only, plus the broker's "started" line (readiness is still checked by protocol).
_LOG4J2 = """\
rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.raftserver.name=kafka.server.KafkaRaftServer
logger.raftserver.level=INFO
logger.appinfo.name=org.apache.kafka.common.utils.AppInfoParser
logger.appinfo.level=INFO
"""


def cache_root() -> Path:
    """Where resolved jars live between runs."""
    return Path(os.environ.get("MICROBATCH_CACHE", Path.home() / ".cache" / "microbatch"))


def kafka_libdir() -> Path:
    """The broker's runtime classpath directory, resolved with Maven on first use.

    Raises DevstackError with one sentence when Maven or the network is missing.
    """
    lib = cache_root() / f"kafka-{KAFKA_VERSION}" / "lib"
    done = lib / ".complete"
    if done.exists():
        return lib
    if shutil.which("mvn") is None:
        raise DevstackError(
            "Maven (mvn) is not installed: install it (apt-get install maven) so the Kafka broker's "
            "jars can be fetched from Maven Central, or set KAFKA_BOOTSTRAP_SERVERS to a running broker."
        )
    tmp = lib.with_name("lib.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    argv = [
        "mvn", "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise DevstackError(
            f"could not resolve Kafka {KAFKA_VERSION} from Maven Central (mvn exit {result.returncode}):\n{tail}"
        )
    (tmp / ".complete").write_text(KAFKA_VERSION)
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    return lib


def broker_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when the broker answers a metadata request and reports a controller (protocol level)."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "log_level": 0, "logger": _silent_logger()}
    admin = AdminClient(config)
    try:
        cluster = admin.describe_cluster(request_timeout=timeout).result(timeout=timeout + 1)
    except Exception:
        return False
    return bool(cluster.nodes)


def _silent_logger() -> object:
    import logging  # noqa: PLC0415 - only needed for readiness probes

    logger = logging.getLogger("devstack.kafka.probe")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


# SCRAM names and passwords go into a StorageTool argument `[name=...,password=...]`: keep to safe characters.
_SCRAM_SAFE = re.compile(r"[A-Za-z0-9._~@+-]+")


@dataclass(frozen=True)
class KafkaSecurity:
    """What `start_kafka` adds for a secured broker.

    `pki`: the server certificate for the SASL_SSL listener (keystore) and the truststore.
    `users`: SCRAM-SHA-512 username -> password, created when the storage is formatted; names and
    passwords are limited to letters, digits and `._~@+-`. `authorizer`: run the StandardAuthorizer with
    `allow.everyone.if.no.acl.found=false` and `super.users=User:ANONYMOUS` (the PLAINTEXT/CONTROLLER side).
    """

    pki: TestPki
    users: Mapping[str, str]
    authorizer: bool = True


@dataclass
class KafkaServer:
    """A broker process started by `start_kafka`. `bootstrap` is what clients connect to.

    `sasl_bootstrap` is the SASL_SSL listener's address when started with `security`, else None.
    """

    workdir: Path
    port: int
    controller_port: int
    pid: int
    startup_seconds: float
    process: subprocess.Popen[bytes] | None = None
    sasl_port: int | None = None
    security: KafkaSecurity | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str | None:
        return None if self.sasl_port is None else f"127.0.0.1:{self.sasl_port}"

    @property
    def log(self) -> Path:
        return self.workdir / "kafka.log"

    def version(self) -> str:
        """The version the broker process printed at start (its AppInfoParser line)."""
        found = re.search(r"Kafka version: (\S+)", self.log.read_text(errors="replace"))
        return found.group(1) if found else "unknown"

    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return pid_alive(self.pid)

    def stop(self, timeout: float = 30.0, *, hard: bool = False) -> None:
        """Stop the broker: SIGTERM (clean shutdown) then SIGKILL after `timeout`; `hard` kills at once."""
        if not pid_cmdline_contains(self.pid, str(self.workdir)):
            return
        reap = self.process.poll if self.process is not None else None
        terminate(self.pid, timeout=0.0 if hard else timeout, reap=reap)
        if self.process is not None:
            self.process.wait(timeout=10)

    def restart(self, *, hard: bool = False) -> None:
        """Stop and start the same broker (same ports, data, SCRAM users, ACLs) and wait until it is ready again."""
        self.stop(hard=hard)
        fresh = _launch(self.workdir, self.port, self.controller_port, sasl_port=self.sasl_port)
        self.pid, self.process, self.startup_seconds = (
            fresh.pid,
            fresh.process,
            fresh.startup_seconds,
        )


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise DevstackError(
            "Java is not installed: the Kafka broker needs OpenJDK 17 or newer "
            "(apt-get install openjdk-17-jre-headless), or set KAFKA_BOOTSTRAP_SERVERS."
        )
    return java


def _properties(workdir: Path, port: int, controller_port: int, sasl: tuple[int, KafkaSecurity] | None) -> str:
    """server.properties; `sasl` = (SASL_SSL port, security) adds the secured listener (module docstring)."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(workdir / "data"),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.dedupe.buffer.size": "33554432",
    }
    if sasl is not None:
        sasl_port, security = sasl
        settings["listeners"] += f",SASL_SSL://127.0.0.1:{sasl_port}"
        settings["advertised.listeners"] += f",SASL_SSL://127.0.0.1:{sasl_port}"
        settings["listener.security.protocol.map"] += ",SASL_SSL:SASL_SSL"
        settings.update(security_properties(security))
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def security_properties(security: KafkaSecurity, pki_dir: Path | None = None) -> dict[str, str]:
    """The broker properties of the SASL_SSL listener's security (not the listener itself); `pki_dir`: where
    the PKI's directory is seen by the broker (a container's mount), when not where it is here."""
    pki = security.pki

    def seen(path: Path) -> str:
        return str(path if pki_dir is None else pki_dir / path.relative_to(pki.directory))

    settings = {
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": seen(pki.keystore),
        "ssl.keystore.password": pki.store_password,
        "ssl.key.password": pki.store_password,
        "ssl.truststore.type": "PKCS12",
        "ssl.truststore.location": seen(pki.truststore),
        "ssl.truststore.password": pki.store_password,
        "ssl.client.auth": "none",
    }
    if security.authorizer:
        settings |= {
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
        }
    return settings


def _scram_arguments(users: Mapping[str, str]) -> list[str]:
    """`--add-scram SCRAM-SHA-512=[name=...,password=...]` per user (Kafka 4.1 `kafka-storage format`)."""
    arguments = []
    for name, password in users.items():
        if not (_SCRAM_SAFE.fullmatch(name) and _SCRAM_SAFE.fullmatch(password)):
            raise DevstackError(
                f"SCRAM user {name!r}: names and passwords may only use letters, digits and ._~@+- "
                "(they are passed to kafka-storage format --add-scram)"
            )
        arguments += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
    return arguments


def start_kafka(
    workdir: Path,
    *,
    port: int | None = None,
    timeout: float = STARTUP_TIMEOUT_S,
    security: KafkaSecurity | None = None,
) -> KafkaServer:
    """Format a fresh KRaft log directory under `workdir` and start a broker on free ports.

    Blocks until the broker answers at protocol level; raises DevstackError (with the log's tail)
    when it does not within `timeout` seconds. With `security`, also a SASL_SSL listener on another
    free port (`KafkaServer.sasl_bootstrap`), its SCRAM users and, unless disabled, the authorizer.
    """
    scram = _scram_arguments(security.users) if security is not None else []  # checked before anything is made
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    controller_port = free_port()
    sasl = (free_port(), security) if security is not None else None
    sasl_port = sasl[0] if sasl is not None else None
    (workdir / "server.properties").write_text(_properties(workdir, port, controller_port, sasl))
    (workdir / "log4j2.properties").write_text(_LOG4J2)
    lib = kafka_libdir()
    fmt = subprocess.run(
        [
            _java(),
            "-cp",
            f"{lib}/*",
            "kafka.tools.StorageTool",
            "format",
            # One argument with `=`: an id may start with "-", which argparse would take for an option.
            f"--cluster-id={_cluster_id()}",
            "-c",
            str(workdir / "server.properties"),
            "--standalone",
            *scram,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if fmt.returncode != 0:
        raise DevstackError(f"kafka storage format failed: {fmt.stderr.strip() or fmt.stdout.strip()}")
    return _launch(workdir, port, controller_port, timeout=timeout, sasl_port=sasl_port, security=security)


def _cluster_id() -> str:
    # KRaft cluster ids are 16 random bytes in URL-safe base64 without padding.
    import base64  # noqa: PLC0415

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _launch(
    workdir: Path,
    port: int,
    controller_port: int,
    *,
    timeout: float = STARTUP_TIMEOUT_S,
    sasl_port: int | None = None,
    security: KafkaSecurity | None = None,
) -> KafkaServer:
    lib = kafka_libdir()
    # The JVM's temporary files in the broker's own directory: lz4-java unpacks its native library
    # into java.io.tmpdir at every start and leaves it there (a .so and a .lck per broker in /tmp).
    tmpdir = workdir / "tmp"
    tmpdir.mkdir(exist_ok=True)
    argv = [
        _java(), "-Xms256m", "-Xmx768m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true", f"-Djava.io.tmpdir={tmpdir}",
        f"-Dlog4j2.configurationFile={workdir / 'log4j2.properties'}",
        f"-Dmicrobatch.devstack={workdir}",
        "-cp", f"{lib}/*", "kafka.Kafka", str(workdir / "server.properties"),
    ]  # fmt: skip
    started = time.monotonic()
    process = start_detached(argv, log=workdir / "kafka.log")
    server = KafkaServer(workdir, port, controller_port, process.pid, 0.0, process, sasl_port, security)
    try:
        wait_for(
            lambda: broker_ready(server.bootstrap) and (sasl_port is None or listening(sasl_port)),
            timeout=timeout,
            what=f"Kafka broker on {server.bootstrap}",
            interval=0.5,
            alive=server.running,
        )
    except DevstackError as exc:
        server.stop(hard=True)
        tail = "\n".join(server.log.read_text(errors="replace").splitlines()[-20:])
        raise DevstackError(f"{exc}\n--- {server.log} (last lines) ---\n{tail}") from None
    server.startup_seconds = time.monotonic() - started
    return server
