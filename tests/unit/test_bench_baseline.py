"""The baseline consumer's checkout says plainly when this clone lacks its commit (a shallow clone)."""

from __future__ import annotations

import pytest

from bench.baseline import MissingCommit, checkout


def test_a_commit_this_clone_does_not_have_is_a_clear_error_and_nothing_is_built() -> None:
    with pytest.raises(MissingCommit, match=r"not in this clone .*git fetch --unshallow"):
        checkout("0" * 40)
