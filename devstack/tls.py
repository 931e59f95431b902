"""A throwaway test PKI made at start-up with the `openssl` CLI and the JDK's `keytool`; nothing is committed.

`make_test_pki` makes a fresh CA, a server certificate it signs (SAN = the given hosts, by default
IP:127.0.0.1 and DNS:localhost) and the PKCS12 stores Kafka reads. `make_other_ca` makes an unrelated
CA for "untrusted certificate" tests. Keys are ECDSA P-256 (instant to generate, understood by the JDK,
OpenSSL and libpq alike); certificates are valid for 30 days from now. Every failure is a DevstackError
naming the tool and showing its stderr.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devstack import DevstackError

__all__ = ["TestPki", "make_other_ca", "make_test_pki"]

VALID_DAYS = 30
# Passed to openssl (-passout env:) and keytool (-storepass:env) so the password is never on a command line.
_STORE_ENV_VAR = "MICROBATCH_TEST_PKI_PASSWORD"

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {san}
"""


@dataclass(frozen=True)
class TestPki:
    """Paths of one test PKI under `directory` (see `make_test_pki`).

    `ca_cert`: the CA certificate (PEM), what clients trust. `server_cert`/`server_key`: the server's
    certificate (PEM, signed by the CA, SAN from `hosts`) and its unencrypted private key (PEM, mode 0600).
    `keystore`: PKCS12 holding the server key, its certificate and the CA (alias `server`).
    `truststore`: PKCS12 holding only the CA as a trusted certificate (alias `ca`). Both stores, and
    the key inside the keystore, are protected by `store_password`.
    """

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    keystore: Path
    truststore: Path
    store_password: str
    hosts: tuple[str, ...]


def _require(tool: str, hint: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise DevstackError(f"{tool} is not installed: {hint}")
    return found


def _openssl() -> str:
    return _require("openssl", "install it with 'apt-get install openssl' (make tools does)")


def _keytool() -> str:
    return _require("keytool", "it comes with the JDK: install it with 'apt-get install openjdk-17-jre-headless'")


def _run(argv: Sequence[str], *, password: str | None = None) -> None:
    env = dict(os.environ)
    if password is not None:
        env[_STORE_ENV_VAR] = password
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DevstackError(f"{Path(argv[0]).name} could not run: {exc}") from None
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip())[-2000:]
        shown = " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv[:3]))
        raise DevstackError(f"{shown} ... failed (exit {result.returncode}):\n{output}")


def _san(hosts: Sequence[str]) -> str:
    entries = []
    for host in hosts:
        try:
            entries.append(f"IP:{ipaddress.ip_address(host)}")
        except ValueError:
            entries.append(f"DNS:{host}")
    return ", ".join(entries)


def _config(directory: Path, hosts: Sequence[str]) -> Path:
    cnf = directory / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF.format(san=_san(hosts)))
    return cnf


def _new_key(path: Path) -> None:
    _run([_openssl(), "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)])
    path.chmod(0o600)


def _new_ca(directory: Path, name: str, cnf: Path) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _new_key(key)
    subject = f"/CN=microbatch {name} {secrets.token_hex(4)}"
    _run([
        _openssl(), "req", "-x509", "-new", "-config", str(cnf), "-extensions", "ca_ext", "-key", str(key),
        "-sha256", "-days", str(VALID_DAYS), "-subj", subject, "-out", str(cert),
    ])  # fmt: skip
    return cert, key


def _fresh_dir(directory: Path) -> Path:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def make_other_ca(workdir: Path) -> Path:
    """Make a second CA, unrelated to any other, under `workdir`; return its certificate (PEM).

    Nothing it signs exists: trusting only this CA must make every verification of a `TestPki`
    server fail. Raises DevstackError when openssl is missing or fails.
    """
    workdir = _fresh_dir(workdir)
    cert, _key = _new_ca(workdir, f"other-ca-{secrets.token_hex(3)}", _config(workdir, ["localhost"]))
    return cert


def make_test_pki(workdir: Path, *, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> TestPki:
    """Make a CA, a server certificate for `hosts` and the Kafka PKCS12 stores under `workdir`.

    `hosts` become the certificate's subjectAltName: IP entries for addresses, DNS entries otherwise;
    the first one is also the subject's CN. Raises DevstackError when openssl or keytool is missing or
    fails (with its stderr). Takes about a second (keytool starts a JVM).
    """
    if not hosts:
        raise DevstackError("make_test_pki needs at least one host for the server certificate")
    openssl, keytool = _openssl(), _keytool()
    directory = _fresh_dir(workdir)
    cnf = _config(directory, hosts)
    ca_cert, ca_key = _new_ca(directory, "ca", cnf)
    server_key, server_cert, csr = directory / "server.key", directory / "server.pem", directory / "server.csr"
    _new_key(server_key)
    _run([openssl, "req", "-new", "-config", str(cnf), "-key", str(server_key), "-subj", f"/CN={hosts[0]}",
          "-out", str(csr)])  # fmt: skip
    _run([
        openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-set_serial", str(secrets.randbits(63)), "-sha256", "-days", str(VALID_DAYS),
        "-extfile", str(cnf), "-extensions", "server_ext", "-out", str(server_cert),
    ])  # fmt: skip
    csr.unlink()
    password = secrets.token_urlsafe(18)
    keystore, truststore = directory / "kafka.keystore.p12", directory / "kafka.truststore.p12"
    _run(
        [
            openssl, "pkcs12", "-export", "-in", str(server_cert), "-inkey", str(server_key),
            "-certfile", str(ca_cert), "-name", "server", "-out", str(keystore), "-passout", f"env:{_STORE_ENV_VAR}",
        ],
        password=password,
    )  # fmt: skip
    # keytool, not openssl: a PKCS12 from `openssl pkcs12 -export -nokeys` lacks the attribute that makes
    # the JDK treat a certificate as trusted, so Java would see an empty truststore.
    _run(
        [
            keytool, "-importcert", "-noprompt", "-alias", "ca", "-file", str(ca_cert), "-keystore", str(truststore),
            "-storetype", "PKCS12", "-storepass:env", _STORE_ENV_VAR,
        ],
        password=password,
    )  # fmt: skip
    keystore.chmod(0o600)
    truststore.chmod(0o644)
    return TestPki(
        directory=directory,
        ca_cert=ca_cert,
        ca_key=ca_key,
        server_cert=server_cert,
        server_key=server_key,
        keystore=keystore,
        truststore=truststore,
        store_password=password,
        hosts=tuple(hosts),
    )
