"""The consumer's default window (consumer.window.LIMITS), as the benchmark states it and uses it.

The plain variants run at these defaults. The ceilings, the flush profile and Kafka Connect's
`batch.size` write transactions of `max_records` messages, the steady runs close windows after
`max_wait_ms`, and the report's settings line, window grid and latency target name them from here:
a new default moves all of them together. (quixstreams keeps its own batching and the naive
consumer commits each message; the baseline runs its own checkout's defaults.)
"""

from __future__ import annotations

from consumer.window import LIMITS

WINDOW_DEFAULTS = {limit.setting: limit.default for limit in LIMITS}
WINDOW_RECORDS = WINDOW_DEFAULTS["max_records"]
"""Messages per window: the size of the ceilings' and Kafka Connect's transactions."""
WINDOW_WAIT_MS = WINDOW_DEFAULTS["max_wait_ms"]
"""How long a window stays open after its first message."""


def window_settings() -> str:
    """The defaults as the report's settings line gives them: `name=value` for each, the bytes in MiB."""
    mib = 1024 * 1024
    return ", ".join(
        f"{name}={value // mib} MiB" if name == "max_bytes" and value % mib == 0 else f"{name}={value}"
        for name, value in WINDOW_DEFAULTS.items()
    )
