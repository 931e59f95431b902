"""One HTTP server for `/metrics`, `/healthz` (the loop is alive) and `/readyz` (able to make progress).

It runs on a daemon thread and only reads `Health`, which the loop thread writes: plain attribute
reads and writes of immutable values, so no lock is needed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclass
class Health:
    """What the probes report. Written by the loop thread only."""

    stall_after_s: float = 120.0
    heartbeat: float = field(default_factory=time.monotonic)
    joined: bool = False  # a rebalance gave this consumer its (possibly empty) assignment
    database_ok: bool = False
    halted: str | None = None
    breaker: str | None = None

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        idle = time.monotonic() - self.heartbeat
        if idle > self.stall_after_s:
            return False, f"the run loop has not turned for {idle:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if not self.joined:
            return False, "not yet assigned by the consumer group"
        if self.halted:
            return False, f"halted: {self.halted}"
        if self.breaker:
            return False, f"dead-letter circuit breaker open: {self.breaker}"
        if not self.database_ok:
            return False, "database unreachable"
        return True, "ok"


class HealthServer:
    """Serves the three endpoints on 127.0.0.1 or 0.0.0.0:`port`; `port=0` picks a free one."""

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

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
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
