"""The benchmark's own servers and data: a Kafka broker, a PostgreSQL cluster with its defaults
(fsync and synchronous_commit on), preloaded topics with their expected totals, fresh databases.
Datasets are of the invoice pipeline unless they name another built-in pipeline with a generator
(vendor-invoices: the lookups variant)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.admin import AdminClient
from psycopg import sql
from rich.console import Console

from bench import secure
from bench.export import ledger_path
from consumer.generators import workload_options
from consumer.produce import Ledger, ensure_topic, produce_workload
from consumer.workload import WorkloadOptions
from devstack.kafka_server import KafkaSecurity, KafkaServer, start_kafka
from devstack.postgres_server import PostgresServer, start_postgres
from devstack.tls import make_test_pki
from devstack.verify import high_watermarks
from pipeline.spec_loader import builtin_dir

PARTITIONS = 4


@dataclass
class Dataset:
    """A preloaded topic, the generator options that made it, and the totals its events must produce."""

    name: str
    topic: str
    count: int
    options: WorkloadOptions
    expected: dict[str, Any]
    pipeline: str = "invoices"  # the built-in pipeline whose events these are


@dataclass
class Lab:
    workdir: Path
    kafka: KafkaServer
    postgres: PostgresServer
    console: Console
    datasets: dict[str, Dataset] = field(default_factory=dict)
    export: Path | None = None  # --export DIR: ledgers of the preloaded datasets go there

    @classmethod
    def start(cls, console: Console, *, export: Path | None = None) -> Lab:
        workdir = Path(tempfile.mkdtemp(prefix="microbatch-bench-", dir="/tmp"))
        workdir.chmod(0o755)
        # Both servers also speak TLS (Kafka: a SASL_SSL listener; PostgreSQL: ssl = on) for the secured
        # variant (bench/secure.py); every other variant connects in plain text, as before.
        pki = make_test_pki(workdir / "pki")
        kafka = start_kafka(workdir / "kafka", security=KafkaSecurity(pki, secure.KAFKA_USERS))
        try:
            postgres = start_postgres(workdir / "postgres", durable=True, tls=pki)
            lab = cls(workdir, kafka, postgres, console, export=export)
            secure.prepare(lab)
        except Exception:
            kafka.stop()
            raise
        return lab

    def stop(self) -> None:
        self.kafka.stop()
        self.postgres.stop("fast")
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def postgres_pid(self) -> int:
        """The postmaster's pid (its children are the backends)."""
        return int((self.postgres.datadir / "postmaster.pid").read_text().split()[0])

    def high_watermarks(self, topic: str) -> dict[tuple[str, int], int]:
        return high_watermarks(self.bootstrap, topic, PARTITIONS)

    def fresh_database(self) -> str:
        """A new empty database; returns its URL. The server is first brought to rest, so that no
        variant pays for the one before it: the earlier variants' databases (verified and exported by
        then) are dropped, or autovacuum would vacuum and analyse their million-row tables during the
        next timed run, and a CHECKPOINT writes out the dirty pages they left."""
        name = "b_" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.postgres.admin_url, autocommit=True) as conn:
            earlier = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'b\\_%'").fetchall()
            for (old,) in earlier:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(old)))
            conn.execute("CHECKPOINT")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        info = psycopg.conninfo.conninfo_to_dict(self.postgres.url)
        info.update(dbname=name, sslmode="disable")  # plain text: only the secured variant pays for TLS
        return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})

    def preload(
        self,
        name: str,
        count: int,
        *,
        seed: int,
        bad_ratio: float = 0.001,
        duplicate_ratio: float = 0.005,
        pipeline: str = "invoices",
        items: int | None = None,
    ) -> Dataset:
        """Produce `count` events of `pipeline` (invoices by default; `items` distinct items, None: the
        generator's default) to a new topic (acknowledged) and keep their expected totals; with `export`,
        also a ledger of every acknowledged message (DIR/<name>.ledger.jsonl)."""
        topic = f"bench-{name}-{uuid.uuid4().hex[:6]}"
        ensure_topic(AdminClient({"bootstrap.servers": self.bootstrap}), topic, PARTITIONS)
        expected_file = self.workdir / f"{topic}.expected.json"
        options = workload_options(
            pipeline, count=count, seed=seed, bad_ratio=bad_ratio, duplicate_ratio=duplicate_ratio, items=items
        )
        ledger_file = None
        if self.export is not None:
            ledger_file = ledger_path(self.export, name)
            ledger_file.unlink(missing_ok=True)  # the ledger appends: a rerun into the same DIR starts afresh
        with Ledger.open(ledger_file) as ledger:
            produce_workload(
                {"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "acks": "all"},
                topic,
                options,
                partitions=PARTITIONS,
                expected=expected_file,
                on_ack=ledger.record if ledger_file is not None else None,
                console=self.console,
            )
        dataset = Dataset(name, topic, count, options, json.loads(expected_file.read_text()), pipeline)
        self.datasets[name] = dataset
        return dataset

    def empty_topic(self, name: str) -> str:
        topic = f"bench-{name}-{uuid.uuid4().hex[:6]}"
        ensure_topic(AdminClient({"bootstrap.servers": self.bootstrap}), topic, PARTITIONS)
        return topic

    def pipeline_file(
        self, topic: str, group: str, *, with_kafka_timestamp: bool = False, pipeline: str = "invoices"
    ) -> Path:
        """The invoice pipeline reading `topic` as `group` (optionally storing the Kafka timestamp), or
        another built-in `pipeline` reading `topic` as `group`."""
        if pipeline != "invoices":
            return self._other_pipeline_file(pipeline, topic, group)
        text = (builtin_dir() / "invoices.toml").read_text()
        text = text.replace('topics = ["invoice-lines"]', f'topics = ["{topic}"]')
        text = text.replace('group = "microbatch-invoices"', f'group = "{group}"')
        text = text.replace('dead_letter_topic = "invoice-lines.dlq"', f'dead_letter_topic = "{topic}.dlq"')
        if with_kafka_timestamp:
            text = text.replace(
                "ingested_at = { ingest_time = true }",
                'kafka_ts = { kafka = "timestamp" }\ningested_at = { ingest_time = true }',
            )
        path = self.workdir / f"{group}.toml"
        path.write_text(text)
        return path

    def _other_pipeline_file(self, pipeline: str, topic: str, group: str) -> Path:
        text = (builtin_dir() / f"{pipeline}.toml").read_text()
        for key, value in (
            ("topics", f'["{topic}"]'),
            ("group", f'"{group}"'),
            ("dead_letter_topic", f'"{topic}.dlq"'),
        ):
            text, found = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.MULTILINE)
            if found != 1:
                raise RuntimeError(f"the built-in {pipeline}.toml has no top-level {key} line")
        path = self.workdir / f"{group}.toml"
        path.write_text(text)
        return path
