"""The optional per-event Python hook of a pipeline (`transform = "module:function"`).

The function receives each decoded event (a dict) in order and returns the event to write (the same
dict, changed or not), or None to skip it (counted, not written, not dead-lettered). Raising rejects
the message as `invalid_event`, with the exception's type and message in the dead-letter headers.
The module is imported once, when `run` starts, before it waits for PostgreSQL and Kafka: importing it
must not need them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Transform = Callable[[dict[str, Any]], dict[str, Any] | None]


class TransformError(Exception):
    """The hook named in the pipeline cannot be loaded; str() says why."""


def load_transform(reference: str, search: Path | None = None) -> Transform:
    """Import `module:function`, looking in `search` (the pipeline file's directory) first."""
    module_name, _, function_name = reference.partition(":")
    if search is not None and str(search) not in sys.path:
        sys.path.insert(0, str(search))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        said = " ".join(str(exc).split())  # the module's own message may span lines: the error is one
        raise TransformError(
            f"transform {reference!r}: cannot import module {module_name!r} ({type(exc).__name__}: {said})"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise TransformError(f"transform {reference!r}: {module_name} has no function {function_name!r}")
    hook: Transform = function
    return hook
