"""Real Kafka, PostgreSQL and Prometheus servers for development and tests, without Docker.

Each server is a real process on 127.0.0.1 (docs/DEVELOPMENT.md): Apache Kafka from Maven Central jars on
the JVM, PostgreSQL from the machine's packages, Prometheus from Debian's package. `python -m devstack up`
starts them in the background and writes `.devstack/env`; the test fixtures start their own throwaway
copies. Nothing here is imported by `consumer` or `pipeline`.
"""

__all__ = ["DevstackError"]


class DevstackError(Exception):
    """A service could not be prepared or started; the message says what and how to fix it."""
