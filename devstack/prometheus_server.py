"""A real Prometheus server (Debian's `prometheus` package) scraping given targets on 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devstack import DevstackError
from devstack.process import free_port, pid_cmdline_contains, start_detached, terminate, wait_for


def prometheus_binary() -> str:
    """Path of the prometheus binary; DevstackError with the install command when absent."""
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        raise DevstackError(
            "Prometheus is not installed: run 'make prometheus' (apt-get install prometheus) "
            "or set PROMETHEUS_URL to a running server."
        )
    return found


@dataclass
class PrometheusServer:
    """A running Prometheus; `url` is its HTTP API base."""

    workdir: Path
    port: int
    pid: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if pid_cmdline_contains(self.pid, str(self.workdir)):
            terminate(self.pid, timeout=15.0, reap=self.process.poll if self.process else None)


def scrape_config(targets: list[str], *, interval: str = "1s", rules: list[Path] | None = None) -> str:
    """A minimal prometheus.yml scraping `targets` as job `microbatch`."""
    lines = [
        "global:",
        f"  scrape_interval: {interval}",
        f"  evaluation_interval: {interval}",
    ]
    if rules:
        lines.append("rule_files:")
        lines += [f"  - {rule}" for rule in rules]
    lines += [
        "scrape_configs:",
        "  - job_name: microbatch",
        "    static_configs:",
        "      - targets: [" + ", ".join(f"'{target}'" for target in targets) + "]",
    ]
    return "\n".join(lines) + "\n"


def start_prometheus(
    workdir: Path,
    *,
    targets: list[str],
    rules: list[Path] | None = None,
    interval: str = "1s",
    timeout: float = 60.0,
) -> PrometheusServer:
    """Start Prometheus under `workdir` scraping `targets`; blocks until /-/ready answers 200."""
    binary = prometheus_binary()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(scrape_config(targets, interval=interval, rules=rules))
    port = free_port()
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    process = start_detached(argv, log=workdir / "prometheus.log")
    server = PrometheusServer(workdir, port, process.pid, process)
    try:
        wait_for(
            lambda: _ready(server.url),
            timeout=timeout,
            what=f"Prometheus on {server.url}",
            alive=lambda: process.poll() is None,
        )
    except DevstackError:
        server.stop()
        raise
    return server


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:  # noqa: S310 - fixed local URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
