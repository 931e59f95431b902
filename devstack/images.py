"""`make images`: the local container images the container tests run, built from Debian's packages
and Maven Central's jars (no image registry is needed), each cached by a hash of what it is made of.

    localhost/microbatch-base:bookworm        Debian 12 minbase + python3, python3-venv (BASE_IMAGE)
    localhost/microbatch-services:bookworm    Debian 12 minbase + OpenJDK 17, PostgreSQL 15, Prometheus
    localhost/microbatch-kafka:4.1.1          images/kafka: KRaft node, apache/kafka-style variables
    localhost/microbatch-postgres:15          images/postgres: postgres-image-style variables
    localhost/microbatch-prometheus:bookworm  images/prometheus: prom/prometheus paths
    localhost/microbatch:<version>            the Dockerfile, with BASE_IMAGE=localhost/microbatch-base

A root filesystem comes from `debootstrap --variant=minbase` (the mirror: MICROBATCH_DEBIAN_MIRROR, else
the machine's apt sources) and is imported with `podman import`. Each image carries the label
`dev.microbatch.content` = the hash of its inputs (package list, files, base's hash); an image whose
label matches is not built again. The builds that fetch from PyPI get the CA bundle named by
SSL_CERT_FILE (or PIP_CERT, REQUESTS_CA_BUNDLE) as a build secret: it is never stored in an image.

Usage: python -m devstack.images [--only PART ...]   (prints what it built or found, and the sizes)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from devstack import DevstackError
from devstack.engine import run, why_unavailable
from devstack.kafka_server import KAFKA_VERSION, cache_root

ROOT = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
LABEL = "dev.microbatch.content"
FALLBACK_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Rootfs:
    """A Debian minbase root filesystem with `packages`, imported as image `name`."""

    name: str
    packages: tuple[str, ...]

    def digest(self) -> str:
        return _hash([SUITE, *self.packages])


BASE = Rootfs("localhost/microbatch-base:bookworm", ("python3", "python3-venv", "ca-certificates"))
SERVICES = Rootfs(
    "localhost/microbatch-services:bookworm",
    ("openjdk-17-jre-headless", "postgresql-15", "prometheus", "wget", "ca-certificates"),
)
KAFKA = f"localhost/microbatch-kafka:{KAFKA_VERSION}"
POSTGRES = "localhost/microbatch-postgres:15"
PROMETHEUS = "localhost/microbatch-prometheus:bookworm"


def microbatch_image() -> str:
    """The local tag of microbatch's own image: localhost/microbatch:<project version>."""
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE)
    return f"localhost/microbatch:{version.group(1) if version else 'dev'}"


def _hash(parts: Iterable[str | bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _files_hash(paths: Iterable[Path]) -> str:
    """The hash of the files under `paths` (names and contents), in a stable order."""
    files = sorted(
        f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file() and "__pycache__" not in f.parts
    )
    return _hash(item for f in files for item in (str(f.relative_to(ROOT)), f.read_bytes()))


def _label(image: str) -> str | None:
    """The content label of a local image, or None when there is no such image."""
    found = run("image", "inspect", "--format", f'{{{{ index .Config.Labels "{LABEL}" }}}}', image, check=False)
    return found.stdout.strip() if found.returncode == 0 else None


def mirror() -> str:
    """The Debian mirror: MICROBATCH_DEBIAN_MIRROR, else the first in the machine's apt sources."""
    if chosen := os.environ.get("MICROBATCH_DEBIAN_MIRROR"):
        return chosen
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    for source in sources:
        text = source.read_text() if source.exists() else ""
        for uri in re.findall(r"^(?:URIs:|deb)\s+(\S+)", text, flags=re.MULTILINE):
            if uri.rstrip("/").endswith("/debian"):
                return str(uri)
    return FALLBACK_MIRROR


def ca_bundle() -> Path | None:
    """The CA bundle a TLS-intercepting proxy needs (from the environment), if one is named."""
    for variable in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(variable)
        if value and Path(value).is_file():
            return Path(value)
    return None


def build_rootfs(rootfs: Rootfs) -> str:
    """debootstrap + podman import, unless the image with this package list exists. Returns its hash."""
    digest = rootfs.digest()
    if _label(rootfs.name) == digest:
        return digest
    if shutil.which("debootstrap") is None:
        raise DevstackError("debootstrap is not installed: run 'make tools' as root")
    work = Path(tempfile.mkdtemp(prefix="microbatch-rootfs-", dir=cache_root() if cache_root().exists() else None))
    target = work / "root"
    try:
        print(f"  debootstrap {SUITE} + {', '.join(rootfs.packages)} ({mirror()})", flush=True)
        packages = f"--include={','.join(rootfs.packages)}"
        argv = ["debootstrap", "--variant=minbase", packages, SUITE, str(target), mirror()]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-10:])
            raise DevstackError(f"debootstrap failed ({result.returncode}):\n{tail}")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):  # downloaded packages: not needed at run time
            shutil.rmtree(target / cache, ignore_errors=True)
            (target / cache).mkdir(parents=True, exist_ok=True)
        tar = subprocess.Popen(
            ["tar", "-C", str(target), "--exclude=./proc", "--exclude=./sys", "--exclude=./dev", "-c", "."],
            stdout=subprocess.PIPE,
        )
        imported = subprocess.run(
            ["podman", "import", "--change", f"LABEL {LABEL}={digest}", "--change", 'CMD ["/bin/bash"]', "-",
             rootfs.name],
            stdin=tar.stdout, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        tar.wait(timeout=60)
        if imported.returncode != 0 or tar.returncode != 0:
            raise DevstackError(f"podman import of {rootfs.name} failed: {imported.stderr.strip()[-800:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return digest


def build(image: str, context: Path, containerfile: Path, digest: str, *, args: dict[str, str] | None = None) -> None:
    """`podman build` (docker format: podman keeps HEALTHCHECK only then) unless `image` has `digest`."""
    if _label(image) == digest:
        return
    argv = ["build", "--format", "docker", "-f", str(containerfile), "-t", image, "--label", f"{LABEL}={digest}"]
    for name, value in (args or {}).items():
        argv += ["--build-arg", f"{name}={value}"]
    if (bundle := ca_bundle()) is not None:
        argv += ["--secret", f"id=ca,src={bundle}"]
    run(*argv, str(context), timeout=1800)


def _kafka(services: str) -> None:
    source = ROOT / "images" / "kafka"
    digest = _hash([services, KAFKA_VERSION, _files_hash([source])])
    if _label(KAFKA) == digest:
        return
    with tempfile.TemporaryDirectory(prefix="microbatch-kafka-image-") as tmp:
        context = Path(tmp)
        for item in source.iterdir():
            shutil.copy2(item, context / item.name)
        resolved = subprocess.run(
            ["mvn", "-B", "-q", "-f", str(source / "pom.xml"), "dependency:copy-dependencies",
             f"-Dkafka.version={KAFKA_VERSION}", f"-DoutputDirectory={context / 'libs'}"],  # one version: the tag's
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        if resolved.returncode != 0:
            raise DevstackError(f"could not resolve the Kafka image's jars: {resolved.stdout[-800:]}")
        build(KAFKA, context, context / "Containerfile", digest, args={"ROOTFS": SERVICES.name})


def build_all(only: frozenset[str] | None = None) -> dict[str, str]:
    """Build (or find cached) every image; returns image → size. `only`: part names (base, services,
    kafka, postgres, prometheus, microbatch) and what they need."""
    wanted = only or frozenset({"base", "services", "kafka", "postgres", "prometheus", "microbatch"})
    images: list[str] = []
    if wanted & {"base", "microbatch"}:
        base = build_rootfs(BASE)
        images.append(BASE.name)
        if "microbatch" in wanted:
            inputs = ("Dockerfile", "pyproject.toml", "uv.lock", "README.md", "consumer", "pipeline")
            sources = [ROOT / name for name in inputs]
            labels = _labels()  # the revision label must name the commit built: hashed like the files
            digest = _hash([base, _files_hash(sources), *labels.values()])
            build(microbatch_image(), ROOT, ROOT / "Dockerfile", digest, args={"BASE_IMAGE": BASE.name, **labels})
            images.append(microbatch_image())
    if wanted & {"services", "kafka", "postgres", "prometheus"}:
        services = build_rootfs(SERVICES)
        images.append(SERVICES.name)
        for part, image in (("postgres", POSTGRES), ("prometheus", PROMETHEUS)):
            if part in wanted:
                source = ROOT / "images" / part
                build(image, source, source / "Containerfile", _hash([services, _files_hash([source])]),
                      args={"ROOTFS": SERVICES.name})  # fmt: skip
                images.append(image)
        if "kafka" in wanted:
            _kafka(services)
            images.append(KAFKA)
    return {image: run("image", "inspect", "--format", "{{.Size}}", image).stdout.strip() for image in images}


def _labels() -> dict[str, str]:
    """The OCI labels' build arguments: version, revision (the commit) and source (the remote, if any)."""

    def git(*args: str) -> str:
        found = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
        return found.stdout.strip() if found.returncode == 0 else ""

    return {"VERSION": microbatch_image().rpartition(":")[2], "REVISION": git("rev-parse", "HEAD") or "unknown",
            "SOURCE": git("config", "--get", "remote.origin.url") or "unknown"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.images", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="a part to build (with what it needs); repeatable")
    args = parser.parse_args(argv)
    if (reason := why_unavailable()) is not None:
        print(f"images: not built here: {reason}; the container tests will be skipped with this reason")
        return 0
    started = time.monotonic()
    try:
        sizes = build_all(frozenset(args.only) if args.only else None)
    except DevstackError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    for image, size in sizes.items():
        print(f"  {image:<45} {int(size) / 1e6:8.0f} MB")
    print(f"images ready in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
