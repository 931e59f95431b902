"""One HTTP server for `/metrics`, `/healthz` (the loop is alive) and `/readyz` (able to make progress).

It runs on a daemon thread and only reads `Health`, which the loop thread writes: plain attribute
reads and writes of immutable values, so no lock is needed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclass
class Health:
    """What the probes report. Written by the loop thread, except `progressed` (the writer thread).

    Liveness is progress: the loop turned, or the write it waits for moved (each of its waits is
    bounded by a timeout smaller than `stall_after_s`; the settings refuse anything else), so one
    long legitimate flush never gets a healthy consumer killed. Readiness is membership: a member
    that joined its group is ready, with or without partitions; so is one whose every topic is
    missing (the group cannot be joined before a topic exists, and a rollout must not wait for it).
    """

    stall_after_s: float = 180.0
    heartbeat: float = field(default_factory=time.monotonic)
    progress: float = 0.0  # when the writer thread's work last moved (monotonic)
    writing: bool = False  # the writer thread is busy with a write or a call
    waiting_for: str | None = None  # what start-up still waits for (the database, the broker, tables)
    joined: bool = False  # a rebalance gave this consumer its (possibly empty) assignment
    subscribed: tuple[str, ...] = ()
    missing_topics: tuple[str, ...] = ()  # subscribed topics the broker does not know (yet)
    database_ok: bool = False
    halted: str | None = None
    breaker: str | None = None

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def progressed(self) -> None:
        """The write in flight moved (writer thread: one float assignment, atomic under the GIL)."""
        self.progress = time.monotonic()

    def working(self, busy: bool) -> None:
        """The writer thread starts (True) or ends (False) a write or a call."""
        self.progress = time.monotonic()
        self.writing = busy

    def alive(self) -> tuple[bool, str]:
        now = time.monotonic()
        if self.writing and now - self.progress > self.stall_after_s:  # however well the loop turns
            return False, f"the write in flight has not moved for {now - self.progress:.0f} s"
        idle = now - max(self.heartbeat, self.progress)
        if idle > self.stall_after_s:
            return False, f"neither the run loop nor the write in flight has moved for {idle:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        missing = ", ".join(self.missing_topics)
        idle_by_absence = bool(self.subscribed) and set(self.subscribed) <= set(self.missing_topics)
        not_ready = (
            (self.waiting_for, f"starting: waiting for {self.waiting_for}"),
            (self.halted, f"halted: {self.halted}"),
            (self.breaker, f"dead-letter circuit breaker open: {self.breaker}"),
            (not self.joined and not idle_by_absence, "joining the consumer group"),
            (not self.database_ok, "database unreachable"),
        )
        reason = next((reason for failing, reason in not_ready if failing), None)
        if reason is not None:
            return False, reason
        if not self.joined:
            return True, f"ok; waiting for topic {missing} to exist before joining the group"
        return True, f"ok; topic {missing} does not exist" if missing else "ok"


class _IPv4Server(ThreadingHTTPServer):
    daemon_threads = True


class _IPv6Server(ThreadingHTTPServer):
    """An IPv6 address; `::` serves IPv4 too (dual stack), so a probe may come over either."""

    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # a host without dual stack serves IPv6 only
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class HealthServer:
    """Serves the three endpoints on `host`:`port`: an IPv4 address, or an IPv6 one (`::`: every address,
    IPv4 included, for single-stack IPv6 clusters); `port=0` picks a free one."""

    def __init__(self, health: Health, registry: CollectorRegistry, *, host: str = "0.0.0.0", port: int = 9108) -> None:  # noqa: S104 - scraped from other hosts by design
        health_ref, registry_ref = health, registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry_ref), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, reason = health_ref.alive() if path == "/healthz" else health_ref.ready()
                    self._send(200 if ok else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes every few seconds would drown the log

        server = _IPv6Server if ":" in host else _IPv4Server
        self._server = server((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
