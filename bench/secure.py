"""The secured deployment's cost: microbatch draining the plain variant's dataset over Kafka's SASL_SSL
listener (SCRAM-SHA-512, the StandardAuthorizer, exact ACLs) and PostgreSQL over verified TLS as the
least-privilege runtime role (docs/OPERATIONS.md, "Security"). secure / plain is that cost, side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from confluent_kafka.admin import AclOperation  # type: ignore[attr-defined]
from psycopg import sql

from devstack.kafka_acls import client_config, grant, group, topic
from devstack.postgres_server import TLS_LOGIN_ROLE

if TYPE_CHECKING:
    from bench.lab import Dataset, Lab

USER = "microbatch"
KAFKA_USERS = {USER: "bench-kafka-pw"}
ROLE, ROLE_PASSWORD = "microbatch_bench_runtime", "bench-pg-pw"


def prepare(lab: Lab) -> None:
    """The consumer principal's ACLs (prefixed: every bench topic and group) and the runtime role."""
    ops = (AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS,
           AclOperation.CREATE)  # fmt: skip
    grant(lab.kafka.bootstrap, USER, [topic("bench-", *ops, prefixed=True),
                                      group("mb-", AclOperation.READ, prefixed=True)])  # fmt: skip
    with psycopg.connect(lab.postgres.admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(ROLE), sql.Literal(ROLE_PASSWORD), sql.Identifier(TLS_LOGIN_ROLE)
            )
        )


def run_secure(lab: Lab, dataset: Dataset, export: Path | None = None) -> dict[str, Any]:
    """`dataset` drained by `microbatch run` over SASL_SSL and verified TLS (init-db as the owner, granting
    the runtime role); the same figures as the plain variant's."""
    from bench import variants  # noqa: PLC0415 - variants imports the lab, which imports this module

    security, listener = lab.kafka.security, lab.kafka.sasl_bootstrap
    if security is None or listener is None:
        raise RuntimeError("the lab's broker has no SASL_SSL listener (bench/lab.py starts one)")

    def consumer_env(url: str) -> dict[str, str]:
        database = str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
        return {
            "KAFKA_BOOTSTRAP_SERVERS": listener,
            "MICROBATCH_KAFKA_CONFIG": json.dumps(client_config(security, USER)),
            "DATABASE_URL": lab.postgres.tls_url(ROLE, ROLE_PASSWORD, database),
        }

    return variants.run_microbatch(
        lab, dataset, {}, label="secure", grant_to=ROLE, consumer_env=consumer_env, export=export
    )
