"""`microbatch dlq replay` on letters that are not whole, on foreign letters, and with a full local queue:
what cannot be replayed faithfully is listed, not sent; no letter ends the run with a traceback."""

from __future__ import annotations

import hashlib
from pathlib import Path

from consumer.replay import ReplayFilter, replay
from devstack.verify import read_topic
from tests.support.consumer_process import run_cli
from tests.support.kafka_io import produce_exact
from tests.support.services import KafkaService
from tests.support.user_paths import create_topic

Outgoing = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]


def _letter(topic: str, offset: int, key: bytes | None, value: bytes, *extra: tuple[str, bytes]) -> Outgoing:
    """A dead letter as the consumer writes it (partition 0 of `topic`), with `extra` headers of ours."""
    headers = [("trace-id", f"t-{offset}".encode()), ("dlq.original.topic", topic.encode()),
               ("dlq.original.partition", b"0"), ("dlq.original.offset", str(offset).encode()),
               ("dlq.reason", b"invalid_json"), ("dlq.attempts", b"1"), *extra]  # fmt: skip
    return (key, value, headers)


def _described(part: str, content: bytes) -> tuple[tuple[str, bytes], ...]:
    return ((f"dlq.{part}.omitted", b"true"), (f"dlq.{part}.bytes", str(len(content)).encode()),
            (f"dlq.{part}.sha256", hashlib.sha256(content).hexdigest().encode()))  # fmt: skip


def test_dlq_replay_lists_a_letter_without_its_key_and_replays_one_without_its_headers(
    kafka: KafkaService, service_env: dict[str, str], invoice_pipeline: Path, unique: str
) -> None:
    source, dlq = f"invoices-{unique}", f"invoices-{unique}.dlq"
    create_topic(kafka.bootstrap, dlq, 1)
    create_topic(kafka.bootstrap, source, 1)
    huge_key = b"k" * 700_000
    produce_exact(kafka.bootstrap, dlq, [
        _letter(source, 1, b"t-1", b"{whole"),
        _letter(source, 2, None, b"{keyless", *_described("key", huge_key)),  # the key did not fit
        _letter(source, 3, b"t-3", b"{headless", ("dlq.headers.omitted", b"true")),  # its headers did not
    ])  # fmt: skip
    result = run_cli(service_env, "dlq", "replay", "--pipeline", str(invoice_pipeline), timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert f"scanned 3 dead letters in {dlq}; 3 matched; replayed 2\n" in result.stdout, output
    assert "skipped 1 dead letter(s) sent without their value or key" in result.stdout, output
    digest = hashlib.sha256(b"{keyless").hexdigest()
    assert f"  original {source}[0]@2 (8 bytes, sha256 {digest}, no key in the letter), dead letter {dlq}/0/1\n" in (
        result.stdout
    ), output
    replayed = sorted(read_topic(kafka.bootstrap, source), key=lambda r: r.offset)
    assert [(r.key, r.value) for r in replayed] == [(b"t-1", b"{whole"), (b"t-3", b"{headless")]
    assert [name for name, _ in replayed[1].raw_headers] == ["trace-id", "dlq.replayed_from"]


def test_dlq_replay_reads_a_foreign_letters_bare_time_as_utc_and_fails_clearly_on_an_unsendable_topic(
    kafka: KafkaService, service_env: dict[str, str], invoice_pipeline: Path, unique: str
) -> None:
    source, dlq = f"invoices-{unique}", f"invoices-{unique}.dlq"
    create_topic(kafka.bootstrap, dlq, 1)
    create_topic(kafka.bootstrap, source, 1)
    produce_exact(kafka.bootstrap, dlq, [
        _letter(source, 1, b"t-1", b"{ours", ("dlq.failed_at", b"2026-03-01T10:00:00+00:00")),
        _letter(source, 2, b"t-2", b"{bare", ("dlq.failed_at", b"2026-03-01T11:00:00")),  # no offset: a foreign one
        _letter(source, 3, b"t-3", b"{early", ("dlq.failed_at", b"2026-02-01T11:00:00")),
    ])  # fmt: skip
    args = ("dlq", "replay", "--pipeline", str(invoice_pipeline), "--since", "2026-03-01T00:00:00Z")
    result = run_cli(service_env, *args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"scanned 3 dead letters in {dlq}; 2 matched; replayed 2\n" in result.stdout, result.stdout
    assert sorted(r.value or b"" for r in read_topic(kafka.bootstrap, source)) == [b"{bare", b"{ours"]

    # A letter naming a topic no client can name: the others are still sent, then the run fails clearly.
    produce_exact(kafka.bootstrap, dlq, [_letter("bad\x00topic", 4, b"t-4", b"{nowhere")])
    result = run_cli(service_env, *args[:4], timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    assert f"dead letter {dlq}/0/3 cannot be sent to 'bad\\x00topic'" in output, output
    values = [r.value or b"" for r in read_topic(kafka.bootstrap, source)]
    assert sorted(values) == sorted([b"{bare", b"{ours", b"{bare", b"{ours", b"{early"]), values


def test_dlq_replay_waits_for_room_when_the_producers_local_queue_is_full(kafka: KafkaService, unique: str) -> None:
    source, dlq = f"invoices-{unique}", f"invoices-{unique}.dlq"
    create_topic(kafka.bootstrap, dlq, 1)
    create_topic(kafka.bootstrap, source, 1)
    produce_exact(kafka.bootstrap, dlq, [_letter(source, n, f"t-{n}".encode(), b"{%d" % n) for n in range(200)])
    reader: dict[str, str | int | bool] = {"bootstrap.servers": kafka.bootstrap}
    # Room for 2 messages: the producer refuses the third until the broker acknowledged some (BufferError).
    writer: dict[str, str | int | bool] = {"bootstrap.servers": kafka.bootstrap, "queue.buffering.max.messages": 2,
                                           "linger.ms": 50}  # fmt: skip
    summary = replay(reader, writer, dlq, ReplayFilter(), timeout_s=120)
    assert (summary.scanned, summary.selected, summary.replayed) == (200, 200, 200)
    assert sorted(r.value or b"" for r in read_topic(kafka.bootstrap, source)) == sorted(b"{%d" % n for n in range(200))
