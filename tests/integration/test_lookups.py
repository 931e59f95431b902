"""`[[lookups]]` end to end: natural keys mapped to surrogate ids in reference tables, against real Kafka
and PostgreSQL, with `microbatch run` as a subprocess (pipeline/lookup_spec.py, pipeline/lookup_sql.py).

Most tests run the built-in vendor-invoices pipeline (vendor name → vendors.vendor_id, then the chained
(vendor_id, sku) → items.item_id, both found or created, names trimmed and lower-cased). The ids are
assigned while the consumer runs, so every total is compared by natural key, through the reference
tables (tests/support/vendor_events.py).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from datetime import UTC, date
from pathlib import Path

import psycopg
import pytest

from devstack.verify import high_watermarks, read_topic, stored_positions
from pipeline.spec_loader import PipelineFileError, builtin_dir, load_pipeline
from tests.support.consumer_process import ConsumerProcess, run_cli
from tests.support.dead_letters import create_topic, init_db, readyz
from tests.support.kafka_io import port_of, sample
from tests.support.lookup_runs import (
    PARTITIONS,
    assert_exact,
    drained,
    prepare,
    produce,
    register,
    replace_once,
    rows,
    topic_of,
    vendor_ids,
    vendor_lines_pipeline,
)
from tests.support.services import KafkaService, wait_until
from tests.support.vendor_events import (
    Expected,
    LineMaker,
    normalise,
    transaction_keys,
    universe,
    vendor_pipeline,
)


def test_find_only_lookup_dead_letters_unknown_keys_and_writes_known_ones(
    kafka: KafkaService, database_url: str, service_env: dict[str, str],
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    """vendors are registered beforehand (create = false, on_missing = "dead_letter"); items are still
    found or created, chained on the vendor's id, so a dead-lettered event must create no item either."""
    pipeline = vendor_pipeline(tmp_path, unique)
    text = replace_once(
        pipeline.read_text(),
        'id = { column = "vendor_id", type = "bigint" }\ncreate = true',
        'id = { column = "vendor_id", type = "bigint" }\ncreate = false\non_missing = "dead_letter"',
    )
    pipeline.write_text(text)
    prepare(service_env, pipeline, kafka, unique)
    with psycopg.connect(database_url, autocommit=True) as conn:
        registered = register(conn, "vendor-00", "vendor-01", "vendor-02")
    rng, maker = random.Random(301), LineMaker(seed=302)
    keys = universe(5, 30)  # Vendor-03 and Vendor-04 are unknown
    lines = [maker.spelled(*keys[rng.randrange(len(keys))]) for _ in range(1500)]
    partition_of = [n % PARTITIONS for n in range(len(lines))]
    sent = produce(kafka, unique, lines, partition_of)
    unknown = {
        (s.partition, s.offset): line for s, line in zip(sent, lines, strict=True) if line.key[0] not in registered
    }
    expected = Expected()
    expected.add(line for line in lines if line.key[0] in registered)
    assert 300 < len(unknown) < 900

    consumer = consumer_factory({**service_env, "MICROBATCH_MAX_RECORDS": "300"}, pipeline)
    wait_until(drained(kafka, database_url, unique), timeout=90, what="the consumer to catch up")
    assert consumer.terminate() == 0, consumer.output()[-3000:]

    dead = read_topic(kafka.bootstrap, f"{topic_of(unique)}.dlq")
    assert {(int(d.headers["dlq.original.partition"]), int(d.headers["dlq.original.offset"])) for d in dead} == set(
        unknown
    )
    assert len(dead) == len(unknown)
    assert {d.headers["dlq.reason"] for d in dead} == {"unknown_reference"}
    # The message names the lookup ("vendor": not its table "vendors", nor its field "vendor_name").
    assert all(re.search(r"\bvendor\b", d.headers["dlq.error.message"]) for d in dead), dead[0].headers
    assert all(d.value == unknown[int(d.headers["dlq.original.partition"]), int(d.headers["dlq.original.offset"])]
               .value() for d in dead)  # fmt: skip
    with psycopg.connect(database_url) as conn:
        assert vendor_ids(conn) == registered
    assert_exact(database_url, expected)
    final = consumer.final_counts()
    assert final is not None and final["rows written"] == len(expected.events)


def test_find_only_lookup_with_on_missing_null_writes_a_null_id(
    kafka: KafkaService, database_url: str, service_env: dict[str, str],
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    pipeline = vendor_lines_pipeline(tmp_path, unique, summary_key='{ day = { day = "occurred_at" } }')
    prepare(service_env, pipeline, kafka, unique)
    with psycopg.connect(database_url, autocommit=True) as conn:
        registered = register(conn, "acme", "globex")
        nullable = conn.execute(
            "SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = 'vendor_lines' "
            "AND column_name IN ('vendor_id', 'vendor')"
        ).fetchall()
    assert dict(nullable) == {"vendor_id": "YES", "vendor": "YES"}
    rng, maker = random.Random(311), LineMaker(seed=312)
    spellings = ["acme", " ACME ", "Acme\t", "globex", "GLOBEX ", "initech", " Initech", "hooli"]
    lines = [maker.line(rng.choice(spellings), "n/a") for _ in range(600)]
    produce(kafka, unique, lines, [n % PARTITIONS for n in range(len(lines))])

    consumer = consumer_factory(service_env, pipeline)
    wait_until(drained(kafka, database_url, unique), timeout=90, what="the consumer to catch up")
    assert consumer.terminate() == 0, consumer.output()[-3000:]

    with psycopg.connect(database_url) as conn:
        written = {
            str(event_id): (vendor_id, vendor, spelled)
            for event_id, vendor_id, vendor, spelled in conn.execute(
                "SELECT event_id, vendor_id, vendor, spelled FROM vendor_lines"
            ).fetchall()
        }
        daily = {day: (int(q), int(n)) for day, q, n in conn.execute("SELECT day, quantity, lines FROM daily_quantity")}
        vendors = vendor_ids(conn)
    want = {}
    for line in lines:
        name = normalise(line.vendor)
        known = name in registered
        want[line.event_id] = (registered[name] if known else None, name if known else None, line.vendor)
    assert written == want
    assert sum(1 for vendor_id, _, _ in written.values() if vendor_id is None) > 100
    want_daily: dict[date, tuple[int, int]] = {}
    for line in lines:
        day = line.ts.astimezone(UTC).date()
        quantity, count = want_daily.get(day, (0, 0))
        want_daily[day] = (quantity + line.quantity, count + 1)
    assert daily == want_daily
    assert vendors == registered, "a find-only lookup created a reference row"
    assert read_topic(kafka.bootstrap, f"{topic_of(unique)}.dlq") == []


def test_a_summary_keyed_by_a_lookup_id_that_may_be_null_is_refused(
    service_env: dict[str, str], unique: str, tmp_path: Path
) -> None:
    pipeline = vendor_lines_pipeline(tmp_path, unique, summary_key='{ vendor_id = "vendor_id" }')
    with pytest.raises(PipelineFileError, match="vendor_id") as refused:
        load_pipeline(pipeline)
    assert "may be missing" in str(refused.value), refused.value
    result = run_cli(service_env, "check-config", "--pipeline", str(pipeline))
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith("FAIL pipeline"), result.stdout
    assert "summary 'daily_quantity' key 'vendor_id'" in result.stdout and "may be missing" in result.stdout


# -- 4. and 5. the chain, and normalisation -----------------------------------------------------------


def test_chained_lookup_keys_items_by_vendor_id_and_sku(
    kafka: KafkaService, database_url: str, service_env: dict[str, str],
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    """The same sku at two vendors is two items; an item's `set` column (description) is the one of the
    event that created it (the first, on one partition) and is never overwritten by later events."""
    pipeline = vendor_pipeline(tmp_path, unique)
    prepare(service_env, pipeline, kafka, unique, partitions=1)
    maker = LineMaker(seed=401)
    first = [
        maker.line("Acme", "SKU-1", description="acme's first"),
        maker.line("Globex", "SKU-1", description=None),
        maker.line(" acme", "sku-1 ", description="acme, later"),
        maker.line("GLOBEX", "Sku-1", description="globex, later"),
        maker.line("Acme", "SKU-2", description="acme two"),
        maker.line("Initech", "SKU-2", description="initech two"),
    ]
    produce(kafka, unique, first, [0] * len(first))
    consumer = consumer_factory(service_env, pipeline)
    wait_until(drained(kafka, database_url, unique, 1), timeout=60, what="the first lines")
    second = [
        maker.line("ACME", "sku-3", description="acme three"),  # a new item of a known vendor
        maker.line("Globex", "SKU-1", description="never written"),
        maker.line("Hooli", "SKU-1", description="hooli one"),
    ]
    produce(kafka, unique, second, [0] * len(second))
    wait_until(drained(kafka, database_url, unique, 1), timeout=60, what="the second lines")
    assert consumer.terminate() == 0, consumer.output()[-3000:]
    # A restart over filled reference tables, as the runtime role: its start-up check reads how far the
    # ids' sequences are, which the role may (init-db --grant-to grants SELECT on them).
    again = consumer_factory(service_env, pipeline)
    wait_until(lambda: "assigned " in again.output() or again.wait(0) is not None, timeout=60, what="a restart")
    assert again.terminate() == 0, again.output()[-3000:]

    expected = Expected()
    expected.add(first + second)
    assert_exact(database_url, expected)
    with psycopg.connect(database_url) as conn:
        items = {
            (vendor, sku): (vendor_id, description)
            for vendor, vendor_id, sku, description in conn.execute(
                "SELECT v.name, i.vendor_id, i.sku, i.description FROM items i JOIN vendors v USING (vendor_id)"
            ).fetchall()
        }
        vendors = vendor_ids(conn)
    assert {key: description for key, (_, description) in items.items()} == {
        ("acme", "sku-1"): "acme's first",
        ("globex", "sku-1"): None,
        ("acme", "sku-2"): "acme two",
        ("initech", "sku-2"): "initech two",
        ("acme", "sku-3"): "acme three",
        ("hooli", "sku-1"): "hooli one",
    }
    assert all(vendor_id == vendors[vendor] for (vendor, _), (vendor_id, _) in items.items())
    assert len(vendors) == 4


def test_normalisation_merges_case_and_padding_variants_into_one_row(
    kafka: KafkaService, database_url: str, service_env: dict[str, str],
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    """ " ACME ", "acme", "Acme" … are one vendor, stored as "acme"; raw rows read the canonical sku."""
    pipeline = vendor_pipeline(tmp_path, unique)
    prepare(service_env, pipeline, kafka, unique)
    maker = LineMaker(seed=501)
    spellings = [" ACME ", "acme", "Acme", "ACME\t", "\nAcMe  "]
    skus = [" Sku-7 ", "sku-7", "SKU-7\n", "sKU-7"]
    lines = [maker.line(vendor, sku) for vendor in spellings for sku in skus]
    # Inner spaces are part of the name: trimming touches the ends only.
    lines += [maker.line("Acme Corp", "SKU-7"), maker.line(" acme corp", "sku-7"), maker.line("acme  corp", "sku-7")]
    # Lower-casing is Unicode's whatever the database's LC_CTYPE (under C, PostgreSQL's lower() keeps Ö).
    lines += [maker.line("ÖKO", "SKU-7"), maker.line(" Öko\t", "sku-7 ")]
    produce(kafka, unique, lines, [n % PARTITIONS for n in range(len(lines))])
    consumer = consumer_factory(service_env, pipeline)
    wait_until(drained(kafka, database_url, unique), timeout=60, what="the consumer to catch up")
    assert consumer.terminate() == 0, consumer.output()[-3000:]

    expected = Expected()
    expected.add(lines)
    assert_exact(database_url, expected)
    with psycopg.connect(database_url) as conn:
        vendors = sorted(name for (name,) in conn.execute("SELECT name FROM vendors"))
        items = sorted(conn.execute("SELECT v.name, i.sku FROM items i JOIN vendors v USING (vendor_id)").fetchall())
        skus_written = {sku for (sku,) in conn.execute("SELECT DISTINCT sku FROM transactions")}
        sku7_vendors = {
            v for (v,) in conn.execute("SELECT DISTINCT t.vendor_id FROM transactions t WHERE t.sku = 'sku-7'")
        }
    assert vendors == ["acme", "acme  corp", "acme corp", "öko"]
    assert items == [("acme", "sku-7"), ("acme  corp", "sku-7"), ("acme corp", "sku-7"), ("öko", "sku-7")]
    assert skus_written == {"sku-7"}, "the raw column reads the canonical sku from the items table"
    assert len(sku7_vendors) == 4


# -- 6. a key the reference table refuses -------------------------------------------------------------


def test_a_key_the_reference_table_refuses_dead_letters_only_its_events(
    kafka: KafkaService, database_url: str, service_env: dict[str, str],
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    pipeline = vendor_pipeline(tmp_path, unique)
    prepare(service_env, pipeline, kafka, unique)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE items ADD CONSTRAINT sku_short CHECK (char_length(sku) <= 5)")
    rng, maker = random.Random(601), LineMaker(seed=602)
    # Short skus (" Ab-12 " is 7 characters as sent, 5 once normalised: accepted).
    keys = [(f"Vendor-{v}", f"s-{s:02d}") for v in range(4) for s in range(20)] + [("Vendor-0", " Ab-12 ")]
    lines = [maker.spelled(*keys[rng.randrange(len(keys))], variants=0.3) for _ in range(2000)]
    bad_at = sorted(rng.sample(range(len(lines)), 10))
    for n, at in enumerate(bad_at):
        # Too long once normalised; "Loner" appears in refused events only.
        vendor = "Loner" if n % 3 == 0 else f"Vendor-{n % 4}"
        lines[at] = maker.line(vendor, f" sku-long-{n % 4} ")
    partition_of = [n % PARTITIONS for n in range(len(lines))]
    sent = produce(kafka, unique, lines, partition_of)
    refused = {(sent[n].partition, sent[n].offset) for n in bad_at}
    expected = Expected()
    expected.add(line for n, line in enumerate(lines) if n not in bad_at)

    consumer = consumer_factory({**service_env, "MICROBATCH_MAX_RECORDS": "500"}, pipeline)
    wait_until(drained(kafka, database_url, unique), timeout=120, what="the consumer to catch up")
    assert consumer.terminate() == 0, consumer.output()[-3000:]

    dead = read_topic(kafka.bootstrap, f"{topic_of(unique)}.dlq")
    assert {(int(d.headers["dlq.original.partition"]), int(d.headers["dlq.original.offset"])) for d in dead} == refused
    assert len(dead) == len(refused)
    assert {d.headers["dlq.reason"] for d in dead} == {"db_rejected"}
    assert {d.headers["dlq.error.sqlstate"] for d in dead} == {"23514"}
    assert all("sku_short" in d.headers["dlq.error.message"] for d in dead), dead[0].headers
    assert re.search(r"isolated \d+ rejected row", consumer.output()), "the rows were not isolated by bisection"
    assert_exact(database_url, expected)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM vendors WHERE name = 'loner'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM items WHERE sku = 'ab-12'").fetchone() == (1,)


# -- 7. a missing reference table ---------------------------------------------------------------------


def test_a_missing_reference_table_halts_without_dead_letters_until_it_is_created(
    kafka: KafkaService, database_url: str, service_env: dict[str, str],
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    pipeline = vendor_pipeline(tmp_path, unique)
    prepare(service_env, pipeline, kafka, unique)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE items")
    # At start-up a missing reference table is waited for, then named with the command that makes it.
    result = run_cli({**service_env, "MICROBATCH_STARTUP_TIMEOUT_S": "2"}, "run", "--pipeline", str(pipeline))
    assert result.returncode == 4, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "items" in result.stderr and "microbatch init-db" in result.stderr, result.stderr
    init_db(service_env, pipeline)

    rng, maker = random.Random(701), LineMaker(seed=702)
    keys = universe(4, 25)
    before = [maker.spelled(*rng.choice(keys)) for _ in range(400)]
    produce(kafka, unique, before, [n % PARTITIONS for n in range(len(before))])
    env = {**service_env, "MICROBATCH_HALTED_RETRY_S": "1"}
    consumer = consumer_factory(env, pipeline)
    port = port_of(consumer)
    wait_until(drained(kafka, database_url, unique), timeout=60, what="the consumer to catch up")
    wait_until(lambda: readyz(port)[0] == 200, timeout=30, what="ready")
    written = high_watermarks(kafka.bootstrap, topic_of(unique), PARTITIONS)

    # While running: the table goes away; every write needs it, so it is systemic, not bad data.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE items")
    after = [maker.spelled(*rng.choice(keys)) for _ in range(400)]
    produce(kafka, unique, after, [n % PARTITIONS for n in range(len(after))])
    wait_until(lambda: sample(port, "microbatch_halted") == 1, timeout=60, what="the consumer to halt")
    status, reason = readyz(port)
    assert status == 503 and "items" in reason, (status, reason)
    halted = [line for line in consumer.output().splitlines() if "halted:" in line]
    assert len(halted) == 1 and "items" in halted[0] and "42P01" in halted[0], halted
    assert stored_positions(database_url, f"group-{unique}") == written
    assert read_topic(kafka.bootstrap, f"{topic_of(unique)}.dlq") == []

    init_db(service_env, pipeline)  # creates the table again; the consumer retries every second
    wait_until(drained(kafka, database_url, unique), timeout=60, what="the consumer to catch up after the fix")
    wait_until(lambda: readyz(port)[0] == 200, timeout=30, what="ready again")
    assert consumer.terminate() == 0, consumer.output()[-3000:]
    assert read_topic(kafka.bootstrap, f"{topic_of(unique)}.dlq") == []
    assert rows(database_url) == len(before) + len(after)
    found = transaction_keys(database_url)
    assert {line.event_id: found[line.event_id] for line in after} == {line.event_id: line.key for line in after}


# -- 8. a reference table without its natural key -----------------------------------------------------


def test_a_reference_table_without_a_unique_natural_key_is_reported(
    kafka: KafkaService, database_url: str, service_env: dict[str, str], unique: str, tmp_path: Path
) -> None:
    pipeline = vendor_pipeline(tmp_path, unique)
    create_topic(kafka.bootstrap, topic_of(unique), PARTITIONS)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (item_id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
            "vendor_id bigint NOT NULL, sku text NOT NULL, description text)"
        )
    problem = "table items: no primary key or unique constraint on (vendor_id, sku)"

    init = run_cli(service_env, "init-db", "--pipeline", str(pipeline))
    assert init.returncode == 1, init.stdout + init.stderr
    assert "Traceback" not in init.stdout + init.stderr
    assert [line for line in init.stderr.splitlines() if line.startswith("mismatch:")] == [f"mismatch: {problem}"]
    assert "created table public.vendors" in init.stdout and "created table public.transactions" in init.stdout

    check = run_cli(service_env, "check-config", "--pipeline", str(pipeline))
    assert check.returncode == 2, check.stdout + check.stderr
    assert "Traceback" not in check.stdout + check.stderr
    failed = [line for line in check.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith("FAIL database"), check.stdout
    # The database's problems are listed one per line: this one, alone.
    assert [line.strip() for line in check.stdout.splitlines() if line.strip().startswith("- ")] == [f"- {problem}"]

    run = run_cli(service_env, "run", "--pipeline", str(pipeline), timeout=60)
    assert run.returncode == 2 and problem in run.stderr and "Traceback" not in run.stderr, run.stderr

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE items ADD UNIQUE (vendor_id, sku)")
    check = run_cli(service_env, "check-config", "--pipeline", str(pipeline))
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_builtin_pipeline_file_is_the_one_these_tests_run() -> None:
    """The tests rewrite only names in the shipped file: its lookups are what they exercise."""
    spec = load_pipeline(builtin_dir() / "vendor-invoices.toml")
    assert [(x.name, x.table, x.create, x.normalize) for x in spec.lookups] == [
        ("vendor", "vendors", True, ("trim", "lower")),
        ("item", "items", True, ("trim", "lower")),
    ]
    assert spec.lookups[1].key == {"vendor_id": "vendor", "sku": "sku"}
