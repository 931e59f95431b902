# mypy: ignore-errors
"""The quixstreams peer of the microbatch benchmark: Kafka -> PostgreSQL with quixstreams' own PostgreSQLSink.

Runs only with the python of `<repo>/.tools/quix-venv` (see bench/quix_env.py and bench/quix/requirements.txt):

    python bench/quix_peer.py --bootstrap B --database-url URL --topic T --group G --table TABLE \
        --expected-count N --timeout S --result FILE [--sink-creates-table]

An `Application` (consumer group G, auto_offset_reset="earliest", every other setting at its default, notably
commit_interval=5 s, commit_every=0, at-least-once) reads JSON values from T, drops invalid events (see `is_valid`),
keeps the fields event_id, invoice_id, user_id, item_id, quantity, unit_price and ts, and hands them to
`PostgreSQLSink` with its default batching. N is the number of *messages* to consume: duplicates and invalid ones
included. When the app has processed N messages it is stopped with `app.stop()`, which makes it flush the sink and
commit offsets a last time. On success the result file gets
    {"events": N, "rows": ..., "skipped": invalid, "seconds": ..., "events_per_s": N / seconds,
     "consume_seconds": ..., "batches": sink writes, "largest_batch": ..., "sink_creates_table": ...,
     "quixstreams": version}
"seconds" runs from the first message processed to the end of the last sink write (its PostgreSQL COMMIT; the
synchronous Kafka offset commit follows within milliseconds), so start-up, group join and shutdown are excluded;
"consume_seconds" ends at the N-th message, before that final flush. rows must equal N - skipped (duplicates become
rows). Exit status: 0 success; 1 timeout (--timeout bounds the whole run) or wrong row count; 2 bad arguments, a
missing topic or a non-empty TABLE.

What PostgreSQLSink (quixstreams 3.28.1) does, i.e. the caveats of the comparison:
- It is a BatchingSink: rows are buffered in memory per topic-partition and written only when the app commits its
  checkpoint (every commit_interval seconds, and on stop/revoke); a run shorter than 5 s is therefore one flush of
  everything at stop. Each partition's batch is one transaction (`with connection:` -> COMMIT) of plain multi-row
  `INSERT INTO t (cols) VALUES (...), (...)` statements built by psycopg2's `execute_values` with its default
  page_size of 100 rows per statement (values interpolated client-side, no COPY). The column list is taken from the
  first row of each batch and None values are left out of rows.
- Kafka offsets are committed (synchronously) only after all sinks flushed: at-least-once. A crash between the
  PostgreSQL COMMIT and the offset commit re-inserts the batch; there is no deduplication (no primary key, no
  ON CONFLICT here), so duplicate messages become duplicate rows. No aggregates or summary tables, no dead-letter
  topic; one row PostgreSQL rejects fails the whole batch and stops the app, hence the plain-Python validity filter
  here (invalid events are counted in "skipped" and dropped).
- By default this script creates TABLE itself with typed columns (uuid, numeric(14,4), timestamptz, like
  microbatch's raw table) and passes schema_auto_update=False, include_metadata=False. With --sink-creates-table
  the sink's default schema handling is used instead: it creates the table (TEXT/BIGINT/DOUBLE PRECISION columns
  plus its `timestamp` and `__key` metadata columns) and, on every batch, queries information_schema and runs
  `ALTER TABLE ... ADD COLUMN IF NOT EXISTS` for each column before inserting.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path

import psycopg2
from confluent_kafka import KafkaException
from psycopg2 import sql
from psycopg2.extensions import parse_dsn, quote_ident
from quixstreams import Application
from quixstreams.error_callbacks import default_on_consumer_error
from quixstreams.models.serializers.exceptions import SerializationError
from quixstreams.models.topics.exceptions import TopicNotFoundError
from quixstreams.sinks.community.postgresql import PostgreSQLSink

FIELDS = ("event_id", "invoice_id", "user_id", "item_id", "quantity", "unit_price", "ts")
TYPED_COLUMNS = (
    ("event_id", "uuid NOT NULL"),
    ("invoice_id", "text"),
    ("user_id", "text"),
    ("item_id", "text"),
    ("quantity", "bigint"),
    ("unit_price", "numeric(14,4)"),
    ("ts", "timestamptz"),
)
STRING_FIELDS = ("invoice_id", "user_id", "item_id")
CONNECT_TIMEOUT_S = 10
STOP_GRACE_S = 30.0  # after the timeout, how long app.stop() may take before the process is ended hard


class Progress:
    """Counters shared by the processing callbacks, the sink and the watchdog thread."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.consumed = 0
        self.skipped = 0
        self.first_message_at: float | None = None
        self.last_message_at: float | None = None
        self.last_write_at: float | None = None
        self.batches = 0
        self.rows_written = 0
        self.largest_batch = 0
        self.timed_out = False
        self.app: Application | None = None
        self.state_dir: str | None = None
        self.done = threading.Event()


class TimedPostgreSQLSink(PostgreSQLSink):
    """PostgreSQLSink unchanged, except that it records when each batch write (ending in COMMIT) finished."""

    def __init__(self, progress: Progress, **kwargs) -> None:
        super().__init__(**kwargs)
        self._progress = progress

    def write(self, batch) -> None:
        super().write(batch)
        progress = self._progress
        progress.last_write_at = time.perf_counter()
        progress.batches += 1
        progress.rows_written += batch.size
        progress.largest_batch = max(progress.largest_batch, batch.size)


def is_valid(value) -> bool:
    """The invoice pipeline's field rules (pipeline/builtin/invoices.toml), checked in plain Python.

    PostgreSQLSink validates nothing and one bad row fails its whole batch (and the app), so invalid events are
    dropped here, without dead-lettering, to let the peer run on the same topics as microbatch.
    """
    if type(value) is not dict:
        return False
    try:
        event_id, quantity, price, ts = value["event_id"], value["quantity"], value["unit_price"], value["ts"]
        texts = [value[name] for name in STRING_FIELDS]
        return (
            all(type(text) is str and 1 <= len(text) <= 64 and "\x00" not in text for text in texts)
            and type(event_id) is str
            and uuid.UUID(event_id) is not None
            and type(ts) is str
            and datetime.fromisoformat(ts).tzinfo is not None
            and type(quantity) is int
            and quantity != 0
            and -1_000_000 <= quantity <= 1_000_000
            and type(price) in (int, float)
            and math.isfinite(price)
            and 0 <= price < 1_000_000_000
            and Decimal(repr(price)).as_tuple().exponent >= -4
        )
    except (KeyError, ValueError, TypeError):
        return False


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--database-url", required=True, help="postgresql://user:password@host:port/dbname")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True, help="consumer group (use a fresh one per run)")
    parser.add_argument("--table", required=True, help="target table in schema public; must be absent or empty")
    parser.add_argument("--expected-count", type=int, required=True, help="messages to consume, duplicates included")
    parser.add_argument("--timeout", type=float, required=True, help="seconds for the whole run, start-up included")
    parser.add_argument("--result", type=Path, required=True, help="JSON result file to write on success")
    parser.add_argument(
        "--sink-creates-table",
        action="store_true",
        help="let PostgreSQLSink create and auto-update the table (its defaults) instead of a typed table",
    )
    args = parser.parse_args(argv)
    if args.expected_count < 1:
        parser.error("--expected-count must be at least 1")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def connection_settings(database_url: str) -> dict:
    """Split a libpq URL into PostgreSQLSink's host/port/dbname/user/password and extra psycopg2.connect kwargs."""
    settings = parse_dsn(database_url)
    port = settings.pop("port", None)
    return {
        "host": settings.pop("host", None),
        "port": int(port) if port else None,
        "dbname": settings.pop("dbname", None),
        "user": settings.pop("user", None),
        "password": settings.pop("password", None),
        **settings,
    }


def count_rows(database_url: str, table: str) -> int | None:
    """Rows in public.<table>, or None when the table does not exist."""
    conn = psycopg2.connect(database_url, connect_timeout=CONNECT_TIMEOUT_S)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", ("public." + quote_ident(table, cur),))
            if cur.fetchone()[0] is None:
                return None
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table)))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def create_typed_table(database_url: str, table: str) -> None:
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind)) for name, kind in TYPED_COLUMNS
    )
    query = sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(sql.Identifier("public", table), columns)
    conn = psycopg2.connect(database_url, connect_timeout=CONNECT_TIMEOUT_S)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query)
    finally:
        conn.close()


def hard_exit(progress: Progress, message: str) -> None:
    """Print `message`, remove the app's temporary state directory and end the process with status 1 at once."""
    print(f"quix_peer: {message}", file=sys.stderr, flush=True)
    if progress.state_dir is not None:
        shutil.rmtree(progress.state_dir, ignore_errors=True)
    os._exit(1)


def watchdog(progress: Progress, timeout: float) -> None:
    """Stop the app once the deadline passes; end the process if it does not stop within STOP_GRACE_S.

    Started before the app is built, so a broker or database that does not answer is bounded by --timeout too.
    """
    if progress.done.wait(timeout):
        return
    progress.timed_out = True
    if progress.app is None:
        hard_exit(progress, f"timed out after {timeout:.0f}s while setting up the app")
    hard_deadline = time.monotonic() + STOP_GRACE_S
    while not progress.done.is_set():
        progress.app.stop()  # repeated: a stop issued before app.run() started its loop would be reset by run()
        if time.monotonic() > hard_deadline:
            hard_exit(
                progress,
                f"timed out after {timeout:.0f}s with {progress.consumed} of {progress.expected} messages consumed, "
                f"and the app did not stop within {STOP_GRACE_S:.0f}s",
            )
        progress.done.wait(0.5)


def build_app(args: argparse.Namespace, progress: Progress, state_dir: str) -> Application:
    """The Application and its dataframe: JSON values -> validity filter -> the 7 fields -> PostgreSQLSink."""

    def count_message() -> None:
        progress.consumed += 1
        if progress.consumed == progress.expected:
            progress.last_message_at = time.perf_counter()
            app.stop()

    def on_message_processed(_topic: str, _partition: int, _offset: int) -> None:
        count_message()

    def on_consumer_error(exc: Exception, message, logger) -> bool:
        """Skip (and count) messages the JSON deserializer rejects; any other consumer error stops the app."""
        if message is None or not isinstance(exc, SerializationError):
            return default_on_consumer_error(exc, message, logger)
        if progress.first_message_at is None:
            progress.first_message_at = time.perf_counter()
        progress.skipped += 1
        count_message()
        return True

    def keep(value) -> bool:
        if progress.first_message_at is None:
            progress.first_message_at = time.perf_counter()
        if is_valid(value):
            return True
        progress.skipped += 1
        return False

    def project(value: dict) -> dict:
        return {field: value[field] for field in FIELDS}

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=state_dir,  # the app is stateless, but quix creates the directory anyway
        on_message_processed=on_message_processed,
        on_consumer_error=on_consumer_error,
        auto_create_topics=False,
        loglevel="WARNING",
    )
    sink = TimedPostgreSQLSink(
        progress,
        table_name=args.table,
        schema_auto_update=args.sink_creates_table,
        include_metadata=args.sink_creates_table,
        **connection_settings(args.database_url),
    )
    sdf = app.dataframe(app.topic(args.topic, value_deserializer="json", key_deserializer="bytes"))
    sdf.filter(keep).apply(project).sink(sink)
    return app


def report(args: argparse.Namespace, progress: Progress) -> int:
    """Check the outcome, write the result file on success and return the exit status."""
    rows = count_rows(args.database_url, args.table) or 0
    where = f"({rows} rows in {args.table})"
    if progress.consumed < progress.expected or progress.first_message_at is None:
        why = f"timed out after {args.timeout:.0f}s" if progress.timed_out else "the app stopped"
        print(
            f"quix_peer: {why} with {progress.consumed} of {progress.expected} messages consumed {where}",
            file=sys.stderr,
        )
        return 1
    if rows != progress.consumed - progress.skipped:
        print(
            f"quix_peer: {progress.consumed} messages consumed and {progress.skipped} skipped as invalid, "
            f"but {rows} rows in {args.table}",
            file=sys.stderr,
        )
        return 1
    end = progress.last_write_at or progress.last_message_at
    seconds = end - progress.first_message_at
    result = {
        "events": progress.consumed,
        "rows": rows,
        "skipped": progress.skipped,
        "seconds": round(seconds, 6),
        "events_per_s": round(progress.consumed / seconds, 1) if seconds > 0 else None,
        "consume_seconds": round(progress.last_message_at - progress.first_message_at, 6),
        "batches": progress.batches,
        "largest_batch": progress.largest_batch,
        "sink_creates_table": args.sink_creates_table,
        "quixstreams": version("quixstreams"),
    }
    args.result.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    progress = Progress(args.expected_count)
    threading.Thread(target=watchdog, args=(progress, args.timeout), name="quix-peer-timeout", daemon=True).start()
    try:
        existing = count_rows(args.database_url, args.table)
        if existing:
            print(f"quix_peer: table {args.table} already holds {existing} rows; use an empty one", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory(prefix="quix-peer-state-") as state_dir:
            progress.state_dir = state_dir
            try:
                progress.app = build_app(args, progress, state_dir)
            except TopicNotFoundError:
                print(f"quix_peer: topic {args.topic} does not exist on {args.bootstrap}", file=sys.stderr)
                return 2
            except KafkaException as exc:
                print(f"quix_peer: cannot set up the app on {args.bootstrap}: {exc}", file=sys.stderr)
                return 1
            if not args.sink_creates_table:
                create_typed_table(args.database_url, args.table)
            progress.app.run()
    finally:
        progress.done.set()
    return report(args, progress)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
