"""ACLs and client settings for a broker started with `KafkaSecurity` (devstack/kafka_server.py).

ACLs are created over the PLAINTEXT listener, whose principal (User:ANONYMOUS) is a super user there.
`grant` returns only once the broker's authorizer shows every binding, so a client started right after
sees them. `client_config` gives the librdkafka settings of a SASL_SSL (SCRAM-SHA-512) client.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaException

# The package re-exports these without `__all__`, which mypy --strict reads as private: they are public API.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from devstack import DevstackError
from devstack.kafka_server import KafkaSecurity

__all__ = ["AclSpec", "bindings_for", "client_config", "grant", "group", "topic"]


@dataclass(frozen=True)
class AclSpec:
    """ALLOW `operations` on one resource (TOPIC or GROUP), named literally or by prefix."""

    resource_type: ResourceType
    name: str
    operations: tuple[AclOperation, ...]
    pattern: ResourcePatternType = ResourcePatternType.LITERAL


def topic(name: str, *operations: AclOperation, prefixed: bool = False) -> AclSpec:
    """ALLOW `operations` (READ, WRITE, DESCRIBE, CREATE, ...) on topic `name` (or every topic it prefixes)."""
    return AclSpec(ResourceType.TOPIC, name, operations, _pattern(prefixed))


def group(name: str, *operations: AclOperation, prefixed: bool = False) -> AclSpec:
    """ALLOW `operations` (usually READ) on consumer group `name` (or every group it prefixes)."""
    return AclSpec(ResourceType.GROUP, name, operations, _pattern(prefixed))


def _pattern(prefixed: bool) -> ResourcePatternType:
    return ResourcePatternType.PREFIXED if prefixed else ResourcePatternType.LITERAL


def _principal(principal: str) -> str:
    return principal if ":" in principal else f"User:{principal}"


def bindings_for(principal: str, specs: Iterable[AclSpec]) -> list[AclBinding]:
    """The AclBinding objects `grant` creates: one per (spec, operation), host `*`, ALLOW."""
    return [
        AclBinding(
            spec.resource_type, spec.name, spec.pattern, _principal(principal), "*", operation, AclPermissionType.ALLOW
        )
        for spec in specs
        for operation in spec.operations
    ]


def grant(bootstrap_plaintext: str, principal: str, bindings: Iterable[AclSpec], *, timeout: float = 30.0) -> None:
    """Create ALLOW ACLs for `principal` ("alice" means "User:alice") through the PLAINTEXT listener.

    Waits for every creation and then until the broker's authorizer lists every binding (DescribeAcls is
    answered by the broker's authorizer), all within `timeout` seconds; raises DevstackError otherwise.
    """
    wanted = bindings_for(principal, bindings)
    if not wanted:
        return
    deadline = time.monotonic() + timeout
    admin = AdminClient({"bootstrap.servers": bootstrap_plaintext})
    try:
        for future in admin.create_acls(wanted, request_timeout=timeout).values():
            future.result(timeout=max(0.1, deadline - time.monotonic()))
    except (KafkaException, TimeoutError) as exc:
        raise DevstackError(f"could not create ACLs for {_principal(principal)}: {exc!r}") from None
    missing = list(wanted)
    while True:
        missing = [binding for binding in missing if not _visible(admin, binding, deadline)]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise DevstackError(f"ACLs for {_principal(principal)} not visible after {timeout:.0f} s: {missing}")
        time.sleep(0.1)


def _visible(admin: AdminClient, binding: AclBinding, deadline: float) -> bool:
    """True when the broker's authorizer lists exactly `binding` (a filter with every field set)."""
    exact = AclBindingFilter(
        binding.restype, binding.name, binding.resource_pattern_type, binding.principal, binding.host,
        binding.operation, binding.permission_type,
    )  # fmt: skip
    remaining = max(1.0, deadline - time.monotonic())
    try:
        return bool(admin.describe_acls(exact, request_timeout=remaining).result(timeout=remaining))
    except (KafkaException, TimeoutError):
        return False


def client_config(security: KafkaSecurity, user: str) -> dict[str, str]:
    """librdkafka settings for `user` (a key of `security.users`) over SASL_SSL with SCRAM-SHA-512.

    Trusts only the PKI's CA and checks the broker's host name against its certificate. Does not
    include `bootstrap.servers`: add `KafkaServer.sasl_bootstrap`. Raises DevstackError for an unknown user.
    """
    if user not in security.users:
        raise DevstackError(f"no SCRAM user {user!r} in this KafkaSecurity (users: {sorted(security.users)})")
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": user,
        "sasl.password": security.users[user],
        "ssl.ca.location": str(security.pki.ca_cert),
        "ssl.endpoint.identification.algorithm": "https",
    }
