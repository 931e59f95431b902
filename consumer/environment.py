"""Which environment variables are microbatch's: `MICROBATCH_<SETTING>`, two plain names, and the
few that are not settings; and what Kubernetes injects that only looks like ours (service links)."""

from __future__ import annotations

import re

ENV_PREFIX = "MICROBATCH_"
CONFIG_ENV = "MICROBATCH_CONFIG"  # names the config file when --config is absent
# The two connection settings are also read from their conventional plain names.
PLAIN_ENV = {"kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS", "database_url": "DATABASE_URL"}
# The credentials can also come from files (a mounted Secret): setting → the variable naming its file.
SECRET_FILE_ENV = {"database_url": "MICROBATCH_DATABASE_URL_FILE", "kafka_config": "MICROBATCH_KAFKA_CONFIG_FILE"}
# Environment variables with our prefix that are not settings of the consumer: the config file, secret files, fault
# injection, the dev stack's cache, service choice, images and Debian mirror, the compose stack's image, and what
# `make test`, `make chaos`, `make fuzz` set.
KNOWN_NON_SETTINGS = frozenset({
    CONFIG_ENV, "MICROBATCH_FAILPOINTS", "MICROBATCH_CACHE", "MICROBATCH_NO_DOCKER", "MICROBATCH_SERVICES",
    "MICROBATCH_KAFKA_IMAGE", "MICROBATCH_POSTGRES_IMAGE", "MICROBATCH_DEBIAN_MIRROR", "MICROBATCH_IMAGE",
    "MICROBATCH_REQUIRE_INTEGRATION", "MICROBATCH_CHAOS", "MICROBATCH_CHAOS_REPORT_DIR", "MICROBATCH_FUZZ",
    *SECRET_FILE_ENV.values(),
})  # fmt: skip
# Kubernetes service links: for each Service of the namespace it injects <NAME>_SERVICE_HOST,
# <NAME>_SERVICE_PORT*, <NAME>_PORT=tcp://… and <NAME>_PORT_<n>_TCP*; a Service named "microbatch…"
# puts them under our prefix. They are not settings (ignored unless they hit a setting's own name).
# Names only Kubernetes makes; a bare <NAME>_PORT could be a mistyped setting, so it counts as a link
# only with a link's value (tcp://host:port).
_SERVICE_LINK = re.compile(
    r"^MICROBATCH(_[A-Z0-9_]+)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$"
)
_LINK_PORT = re.compile(r"^MICROBATCH(_[A-Z0-9_]+)?_PORT$")
_SERVICE_LINK_VALUE = re.compile(r"^(tcp|udp|sctp)://[^/]*:\d+$")


def env_names(name: str) -> tuple[str, ...]:
    """The environment variables of setting `name`, the first one set winning."""
    return (ENV_PREFIX + name.upper(), *((PLAIN_ENV[name],) if name in PLAIN_ENV else ()))


def is_service_link(variable: str, value: str) -> bool:
    """True for a variable Kubernetes makes for a Service (never a setting of ours, whatever its prefix)."""
    return bool(_SERVICE_LINK.match(variable) or (_LINK_PORT.match(variable) and is_service_link_value(value)))


def is_service_link_value(value: str) -> bool:
    """True for a value like `tcp://10.0.0.1:9108`: a service link that hit a setting's own name."""
    return bool(_SERVICE_LINK_VALUE.match(value))
