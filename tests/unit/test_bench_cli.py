"""`python -m bench --only NAME`: a variant the chosen mode (or a flag) never runs is a usage error
before anything starts, instead of an empty run that exits 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import MODES, main, never_run


def test_the_smoke_mode_never_builds_the_baseline_nor_runs_the_jvm_and_python_peers() -> None:
    idle = never_run(MODES["smoke"], with_quix=True, with_connect=True)
    assert set(idle) == {"microbatch_baseline", "quixstreams", "connect_insert", "connect_upsert"}
    assert "does not build the baseline" in idle["microbatch_baseline"]


def test_the_full_mode_runs_every_variant_unless_a_flag_leaves_a_peer_out() -> None:
    assert never_run(MODES["full"], with_quix=True, with_connect=True) == {}
    assert never_run(MODES["full"], with_quix=False, with_connect=True) == {"quixstreams": "--no-quix"}
    assert set(never_run(MODES["quick"], with_quix=True, with_connect=False)) == {"connect_insert", "connect_upsert"}


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--mode", "smoke", "--only", "microbatch_baseline"], "--only microbatch_baseline: the smoke mode"),
        (["--mode", "full", "--no-quix", "--only", "microbatch,quixstreams"], "--only quixstreams: --no-quix"),
    ],
)
def test_only_a_variant_that_is_never_run_is_a_usage_error(
    argv: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything started


def test_the_mode_is_the_reason_when_it_never_runs_a_peer_whatever_the_flags() -> None:
    idle = never_run(MODES["smoke"], with_quix=False, with_connect=False)
    assert idle["quixstreams"] == idle["connect_insert"] == "the smoke mode does not run it"


def test_a_named_variant_that_did_not_run_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The baseline is named but could not be made ready (its checkout failed): the run says so and exits 1."""

    def ran_nothing(*_: object, **__: object) -> dict[str, object]:
        return {"variants": {}, "seconds": 1.0, "baseline_missing": "the commit is not in this clone"}

    monkeypatch.setattr("bench.__main__.run", ran_nothing)
    assert main(["--mode", "full", "--only", "microbatch_baseline", "--out", str(tmp_path / "out")]) == 1

    def ran_it(*_: object, **__: object) -> dict[str, object]:
        return {"variants": {"microbatch": {"correct": True}}, "seconds": 1.0}

    monkeypatch.setattr("bench.__main__.run", ran_it)
    assert main(["--mode", "full", "--only", "microbatch", "--out", str(tmp_path / "out")]) == 0
