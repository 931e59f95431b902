"""The `microbatch` command line's argument types: each turns one option's text into its value, or raises
argparse.ArgumentTypeError (or ValueError) so that argparse prints one line naming the option and exits 2."""

from __future__ import annotations

import argparse
import math
from datetime import datetime

# The wording `positions reset --to` uses too (consumer.position_reset.parse_target).
NEEDS_OFFSET = "a timestamp needs a UTC offset (e.g. 2026-12-01T10:00:00Z)"


def timestamp(text: str) -> datetime:
    """An RFC 3339 timestamp with its UTC offset; one without is refused, not guessed to be UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(NEEDS_OFFSET)
    return moment


def ratio(text: str) -> float:
    """A share between 0 and 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def positive(text: str) -> int:
    """An integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def messages_per_second(text: str) -> float:
    """A finite number, at least 0 (0: no limit, as the option's absence): float() also takes nan, inf and
    negative numbers, which no pace means."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be a number of messages per second (0: no limit)")
    return value
