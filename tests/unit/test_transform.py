"""The Python hook: change, skip or reject events, and clear errors when it cannot be loaded."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.decode import Decoder
from pipeline.records import Record, RejectReason
from pipeline.spec_loader import PipelineFileError, builtin_dir, load_pipeline
from pipeline.transform import TransformError, load_transform

EVENT = {
    "event_id": "0b7f8f0e-3f7a-4a6e-9d3c-1f2e3d4c5b6a", "invoice_id": "i", "user_id": "u", "item_id": "ITEM-1",
    "quantity": 1, "unit_price": 1.5, "ts": "2026-01-01T00:00:00Z",
}  # fmt: skip


def hook(event: dict[str, Any]) -> dict[str, Any] | None:
    if event["user_id"] == "skip-me":
        return None
    if event["user_id"] == "explode":
        raise KeyError("no such customer")
    if event["user_id"] == "weird":
        return ["not", "a", "dict"]  # type: ignore[return-value]
    return {**event, "item_id": event["item_id"].lower()}


def test_the_hook_changes_skips_and_rejects_in_order() -> None:
    decoder = Decoder(load_pipeline(), transform=hook)
    users = ["a", "skip-me", "explode", "weird", "b"]
    out = decoder.decode([Record("t", 0, n, None, orjson.dumps({**EVENT, "user_id": u})) for n, u in enumerate(users)])
    assert out.row_records == [0, 4]
    assert {row[4] for row in out.rows} == {"item-1"}
    assert out.skipped == [1]
    assert out.rejected_records == [2, 3]
    assert [r.reason for r in out.rejections] == [RejectReason.INVALID_EVENT] * 2
    assert out.rejections[0].message == "transform raised KeyError: 'no such customer'"
    assert "not a dict or None" in out.rejections[1].message


def test_hooks_are_found_next_to_the_pipeline_file(tmp_path: Path) -> None:
    (tmp_path / "myhooks_a1.py").write_text("def upper(event):\n    return event\n")
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('transform = "myhooks_a1:upper"\n' + (builtin_dir() / "invoices.toml").read_text())
    spec = load_pipeline(pipeline)
    assert spec.origin == tmp_path
    assert callable(load_transform("myhooks_a1:upper", spec.origin))
    sys.modules.pop("myhooks_a1", None)


@pytest.mark.parametrize(
    ("source", "reference", "message"),
    [
        (None, "no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("def g(e):\n    return e\n", "hooks_b2:f", "has no function 'f'"),
        ("def f(e) return e\n", "hooks_c3:f", "SyntaxError"),
    ],
)
def test_unloadable_hooks_are_configuration_errors(
    tmp_path: Path, source: str | None, reference: str, message: str
) -> None:
    if source is not None:
        (tmp_path / (reference.split(":", maxsplit=1)[0] + ".py")).write_text(source)
    with pytest.raises(TransformError, match=message):
        load_transform(reference, tmp_path)


def test_the_pipeline_refuses_to_start_with_a_broken_hook(tmp_path: Path) -> None:
    from pipeline.prepare import Preparer

    pipeline = tmp_path / "p.toml"
    pipeline.write_text('transform = "nowhere_d4:f"\n' + (builtin_dir() / "invoices.toml").read_text())
    with pytest.raises(PipelineFileError, match="cannot import module 'nowhere_d4'"):
        Preparer(load_pipeline(pipeline))


def test_an_import_error_spanning_lines_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "noisyhooks.py").write_text('raise RuntimeError("settings missing:\\n  - API_KEY\\n  - REGION")\n')
    with pytest.raises(TransformError) as caught:
        load_transform("noisyhooks:clean", tmp_path)
    assert str(caught.value) == (
        "transform 'noisyhooks:clean': cannot import module 'noisyhooks' "
        "(RuntimeError: settings missing: - API_KEY - REGION)"
    )
    sys.modules.pop("noisyhooks", None)
