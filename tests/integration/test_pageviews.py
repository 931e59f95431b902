"""A second pipeline, declared in TOML only: page views into `page_views` and `page_views_minutely`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC
from pathlib import Path

import psycopg
from confluent_kafka.admin import AdminClient

from consumer.produce import ensure_topic
from devstack.verify import caught_up, read_topic
from pipeline.spec_loader import builtin_dir
from tests.support.consumer_process import ConsumerProcess, run_cli
from tests.support.kafka_io import produce_exact
from tests.support.pageviews import PageViewWorkload
from tests.support.services import KafkaService, wait_until

PARTITIONS = 3


def pageviews_pipeline(tmp_path: Path, unique: str, extra: str = "") -> Path:
    text = (builtin_dir() / "pageviews.toml").read_text()
    text = text.replace('topics = ["page-views"]', f'topics = ["views-{unique}"]')
    text = text.replace('group = "microbatch-pageviews"', f'group = "views-{unique}"')
    text = text.replace('dead_letter_topic = "page-views.dlq"', f'dead_letter_topic = "views-{unique}.dlq"')
    path = tmp_path / "pageviews.toml"
    path.write_text(text.replace("dead_letter_topic =", extra + "dead_letter_topic =", 1) if extra else text)
    return path


def minutely(database_url: str) -> dict[tuple[str, object], tuple[int, int, int, str | None]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT page, minute, views, min_load_ms, max_load_ms, last_referrer FROM page_views_minutely"
        ).fetchall()
    return {(page, minute.astimezone(UTC)): (views, low, high, last) for page, minute, views, low, high, last in rows}


def expected(workload: PageViewWorkload) -> dict[tuple[str, object], tuple[int, int, int, str | None]]:
    return {
        key: (t.views, t.min_load_ms or 0, t.max_load_ms or 0, t.last[1] if t.last else None)
        for key, t in workload.totals.items()
    }


def test_pageviews_exact_totals_across_sigkill_restarts(
    kafka: KafkaService, database_url: str, service_env: dict[str, str],
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    pipeline = pageviews_pipeline(tmp_path, unique)
    result = run_cli(service_env, "init-db", "--pipeline", str(pipeline))
    assert result.returncode == 0, result.stderr
    topic = f"views-{unique}"
    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, PARTITIONS)
    workload = PageViewWorkload(seed=17)
    batches = [workload.messages(6000, bad_every=500, duplicate_every=97) for _ in range(3)]
    for batch in batches:
        produce_exact(kafka.bootstrap, topic, [(key, value, None) for key, value in batch])
    total = len({e["view_id"] for e in workload.good})

    # Small windows, so that each kill lands in the middle of the stream, at rising row counts.
    env = {**service_env, "MICROBATCH_MAX_RECORDS": "300"}
    consumer = consumer_factory(env, pipeline)
    thresholds = (2000, 7000, 12000)
    kills = len(thresholds)
    for threshold in thresholds:
        wait_until(lambda: _rows(database_url) >= threshold, timeout=60, what=f"{threshold} rows",  # noqa: B023
                   interval=0.02)  # fmt: skip
        consumer.kill()  # SIGKILL mid-stream, then a fresh process resumes from PostgreSQL
        assert _rows(database_url) < total, f"the kill at {threshold} rows found the stream already written"
        consumer = consumer_factory(env, pipeline)
    wait_until(_caught_up(kafka, database_url, unique), timeout=180, what="the consumer to catch up")
    assert consumer.terminate() == 0

    assert _rows(database_url) == len({e["view_id"] for e in workload.good})
    assert minutely(database_url) == expected(workload)
    # A dead letter sent for a window the kill cut short is sent again by the next process (the contract:
    # twice, never zero), so each bad message appears at least once and at most once more per kill.
    dead = read_topic(kafka.bootstrap, f"views-{unique}.dlq")
    bad = Counter(value for batch in batches for key, value in batch if key == b"bad")
    assert len(bad) == 3 * (6000 // 500)
    copies = Counter(d.value for d in dead)
    assert set(copies) == set(bad), "dead letters differ from the bad messages produced"
    assert max(copies.values()) <= 1 + kills, copies.most_common(3)
    assert {d.headers["dlq.reason"] for d in dead} == {"invalid_event"}


def _caught_up(kafka: KafkaService, database_url: str, unique: str) -> Callable[[], bool]:
    topic = f"views-{unique}"
    return lambda: caught_up(database_url, topic, kafka.bootstrap, topic, PARTITIONS)


def _rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM page_views").fetchone()
    return int(row[0]) if row else 0


def test_a_transform_hook_changes_skips_and_rejects_events(
    kafka: KafkaService, database_url: str, service_env: dict[str, str],
    consumer_factory: Callable[..., ConsumerProcess], unique: str, tmp_path: Path,
) -> None:  # fmt: skip
    (tmp_path / "viewhooks.py").write_text(
        "def clean(event):\n"
        "    if event['user']['id'].startswith('bot-'):\n"
        "        return None\n"
        "    if event['page']['path'] == '/boom':\n"
        "        raise ValueError('boom pages are not tracked')\n"
        "    event['page']['path'] = event['page']['path'].rstrip('/') or '/'\n"
        "    return event\n"
    )
    pipeline = pageviews_pipeline(tmp_path, unique, extra='transform = "viewhooks:clean"\n')
    assert run_cli(service_env, "init-db", "--pipeline", str(pipeline)).returncode == 0
    topic = f"views-{unique}"
    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, PARTITIONS)
    base = {"page": {"path": "/a/"}, "user": {"id": "u-1"}, "load_ms": 5, "viewed_at": "2026-01-01T00:00:00Z"}
    import orjson

    events = [
        {**base, "view_id": "00000000-0000-4000-8000-000000000001"},
        {**base, "view_id": "00000000-0000-4000-8000-000000000002", "user": {"id": "bot-7"}},
        {**base, "view_id": "00000000-0000-4000-8000-000000000003", "page": {"path": "/boom"}},
    ]
    produce_exact(kafka.bootstrap, topic, [(b"k", orjson.dumps(e), None) for e in events])
    consumer = consumer_factory(service_env, pipeline)
    wait_until(_caught_up(kafka, database_url, unique), timeout=60, what="the consumer to catch up")
    assert consumer.terminate() == 0
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT view_id::text, page FROM page_views").fetchall()
    assert rows == [("00000000-0000-4000-8000-000000000001", "/a")]
    dead = read_topic(kafka.bootstrap, f"views-{unique}.dlq")
    assert len(dead) == 1
    assert dead[0].headers["dlq.reason"] == "invalid_event"
    assert "boom pages are not tracked" in dead[0].headers["dlq.error.message"]


def test_init_db_lists_every_mismatch_and_drops_nothing(
    service_env: dict[str, str], database_url: str, unique: str, tmp_path: Path
) -> None:
    pipeline = pageviews_pipeline(tmp_path, unique)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE page_views (view_id text, page text, keep_me int)")
        conn.execute("INSERT INTO page_views VALUES ('x', '/', 1)")
    result = run_cli(service_env, "init-db", "--pipeline", str(pipeline))
    assert result.returncode == 1
    for problem in (
        "table page_views: column view_id is text, expected uuid",
        "table page_views: missing column load_ms (integer)",
        "table page_views: missing column viewed_at (timestamp with time zone)",
        "table page_views: no primary key or unique constraint on (view_id)",
    ):
        assert problem in result.stderr, result.stderr
    assert "created table public.page_views_minutely" in result.stdout
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT keep_me FROM page_views").fetchone() == (1,)
