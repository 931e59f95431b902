"""The quixstreams peer's own virtual environment: `<repo>/.tools/quix-venv`, built from `bench/quix/requirements.txt`.

quixstreams pins its own confluent-kafka, so it cannot share the project's `.venv`. `ensure_quix_venv` builds a
separate Python 3.11 venv with uv (never downloading a Python, like the Makefile) and records the SHA-256 of the
requirements file inside it; the venv is rebuilt from scratch when it is missing, incomplete or the file changed.
Standard library only, so the benchmark driver can call it from any interpreter.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

VENV_DIR = Path(".tools") / "quix-venv"
REQUIREMENTS = Path("bench") / "quix" / "requirements.txt"
DEFAULT_UV = Path(".tools") / "bin" / "uv"
PYTHON_VERSION = "3.11"
HASH_FILE = ".requirements.sha256"
INSTALL_TIMEOUT_S = 1800.0


def ensure_quix_venv(repo: Path, uv: Path | None = None) -> Path:
    """Make sure `<repo>/.tools/quix-venv` holds exactly `bench/quix/requirements.txt` and return its python.

    `uv` defaults to `<repo>/.tools/bin/uv` (installed by `make setup`). The venv is (re)created with
    `uv venv --clear --python 3.11` and filled with `uv pip install -r` when its python is missing or the stored
    SHA-256 of the requirements file differs from the file's current hash; otherwise nothing runs. The hash is
    written only after a successful install, so an interrupted build is redone on the next call.
    Returns the absolute path of the venv's `bin/python`. Raises RuntimeError (one sentence) when uv or the
    requirements file is missing or a uv command fails.
    """
    repo = repo.resolve()
    uv_path = (uv if uv is not None else repo / DEFAULT_UV).resolve()
    requirements = repo / REQUIREMENTS
    venv = repo / VENV_DIR
    python = venv / "bin" / "python"
    hash_file = venv / HASH_FILE
    if not requirements.is_file():
        raise RuntimeError(f"The quixstreams requirements file {requirements} does not exist.")
    if not (uv_path.is_file() and os.access(uv_path, os.X_OK)):
        raise RuntimeError(f"No executable uv at {uv_path}; run `make setup` or pass the uv binary explicitly.")
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and _read_hash(hash_file) == wanted:
        return python
    if hash_file.exists():
        hash_file.unlink()
    _run_uv(
        [
            str(uv_path),
            "venv",
            "--clear",
            "--no-project",
            "--no-python-downloads",
            "--python",
            PYTHON_VERSION,
            "--quiet",
            str(venv),
        ],
        repo,
        f"creating the quixstreams venv at {venv}",
    )
    _run_uv(
        [
            str(uv_path),
            "pip",
            "install",
            "--no-python-downloads",
            "--python",
            str(python),
            "--quiet",
            "-r",
            str(requirements),
        ],
        repo,
        f"installing {requirements} into {venv}",
    )
    if not python.exists():
        raise RuntimeError(f"uv reported success but {python} does not exist.")
    hash_file.write_text(wanted + "\n", encoding="ascii")
    return python


def _read_hash(hash_file: Path) -> str | None:
    """The hash recorded by the last successful install, or None when there is none."""
    try:
        return hash_file.read_text(encoding="ascii").strip()
    except OSError:
        return None


def _run_uv(argv: list[str], cwd: Path, what: str) -> None:
    """Run one uv command; on failure raise RuntimeError naming `what`, the exit status and uv's error lines."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONHOME"}}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    try:
        done = subprocess.run(
            argv, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"Failed {what}: {exc}.") from exc
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.lower().startswith(("error:", "cause:", "caused by:"))]
        detail = " ".join(errors or lines[-1:]) or "no output"
        raise RuntimeError(f"Failed {what} (uv exit status {done.returncode}): {detail}")


__all__ = ["ensure_quix_venv"]
