"""microbatch's service side: the Kafka run loop, dead letters, metrics, health and the CLI."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("microbatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
