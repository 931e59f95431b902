"""`pip install` of the wheel is enough: built with `uv build`, installed into a fresh venv with the locked
dependencies, its `microbatch` finds the built-in pipelines (init-db, check-config) and knows its version;
devstack, bench and tests stay out of it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from consumer import __version__
from pipeline.spec_loader import load_pipeline

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path

    @property
    def microbatch(self) -> Path:
        return self.venv / "bin" / "microbatch"


def _uv() -> str:
    local = ROOT / ".tools" / "bin" / "uv"
    found = str(local) if local.exists() else shutil.which("uv")
    if found is None:
        pytest.skip("uv is not installed (`make setup` installs it into .tools/)")
    return found


def _run(
    args: list[str | Path], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion within `timeout` seconds; it must succeed."""
    command = [str(arg) for arg in args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel of this checkout, installed into a venv of its own (uv's cache keeps this quick)."""
    work = tmp_path_factory.mktemp("wheel")
    uv, env = _uv(), {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}  # keeps SSL_CERT_FILE and the proxy
    _run([uv, "build", "--wheel", "--out-dir", work / "dist", ROOT], timeout=300, env=env, cwd=ROOT)
    (wheel,) = (work / "dist").glob("microbatch-*.whl")
    locked = work / "requirements.txt"  # the dependencies at the versions the tests run with
    _run([uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "--output-file", locked],
         timeout=120, env=env, cwd=ROOT)  # fmt: skip
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", venv], timeout=120)
    _run([uv, "pip", "install", "--python", venv / "bin" / "python", "-r", locked, wheel], timeout=600, env=env)
    return Installed(wheel, venv)


def test_the_wheel_holds_the_service_and_the_built_in_pipelines_but_no_dev_tools(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert {"pipeline/builtin/invoices.toml", "pipeline/builtin/pageviews.toml", "consumer/cli.py"} <= set(names)
    assert [name for name in names if name.split("/")[0] in {"devstack", "bench", "tests", "pipelines"}] == []
    licenses = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]  # PEP 639
    assert len(licenses) == 1
    assert zipfile.ZipFile(installed.wheel).read(licenses[0]) == (ROOT / "LICENSE").read_bytes()


def test_the_installed_microbatch_knows_its_version_and_runs_init_db_and_check_config(
    installed: Installed, service_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    # Nothing from the checkout: no PYTHONPATH, and a working directory outside it.
    # As the database's owner: this is about the installation, init-db creates tables (the roles are test_roles').
    env = {key: value for key, value in service_env.items() if key != "PYTHONPATH"} | {"DATABASE_URL": database_url}
    python = installed.venv / "bin" / "python"
    where = _run([python, "-c", "import pipeline.spec_loader as s; print(s.builtin_dir())"], 60, env=env, cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(installed.venv), "the venv must use its own installed copy"
    no_devstack = subprocess.run([python, "-c", "import devstack"], capture_output=True, env=env, cwd=tmp_path,
                                 timeout=60, check=False)  # fmt: skip
    assert no_devstack.returncode != 0

    version = _run([installed.microbatch, "--version"], 60, env=env, cwd=tmp_path)
    assert version.stdout.strip() == f"microbatch {__version__}"

    init = _run([installed.microbatch, "init-db", "--pipeline", "pageviews"], 120, env=env, cwd=tmp_path)
    assert "schema ready for pipeline 'pageviews'" in init.stdout
    spec = load_pipeline("pageviews")
    expected = {spec.raw.table, *(summary.table for summary in spec.summaries)}
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (spec.schema_name,)
        ).fetchall()
    assert expected <= {row[0] for row in rows}

    # check-config reaches every check; the pipeline and the tables it just created are fine (whether the
    # topic exists is not this test's business).
    check = subprocess.run([installed.microbatch, "check-config", "--pipeline", "pageviews"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=120, check=False)  # fmt: skip
    assert check.returncode in {0, 2}, check.stdout + check.stderr
    assert re.search(r"^ok\s+pipeline: 'pageviews'", check.stdout, re.MULTILINE), check.stdout + check.stderr
    assert re.search(r"^ok\s+database: ", check.stdout, re.MULTILINE), check.stdout + check.stderr
