"""The consumer's default window, as the benchmark states it and hands it to the other writers.

Every variant runs at microbatch's defaults, and the ceilings and the peers write in transactions
of the same size (`batch.size` for Kafka Connect): read from consumer.window.LIMITS, so that a new
default moves all of them together and the report names the window that ran.
"""

from __future__ import annotations

from consumer.window import LIMITS

WINDOW_DEFAULTS = {limit.setting: limit.default for limit in LIMITS}
WINDOW_RECORDS = WINDOW_DEFAULTS["max_records"]
"""Messages per window: the size of every ceiling's and peer's transaction."""


def window_settings() -> str:
    """The defaults as the report's settings line gives them, e.g. 'max_records=5000, max_bytes=8 MiB, ...'."""
    mib = 1024 * 1024
    return ", ".join(
        f"{name}={value // mib} MiB" if name == "max_bytes" and value % mib == 0 else f"{name}={value}"
        for name, value in WINDOW_DEFAULTS.items()
    )
