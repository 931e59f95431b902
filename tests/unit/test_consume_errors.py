"""A consume() batch's errors sorted by what the loop does with them (consumer/consume_errors.py)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, Message

from consumer.consume_errors import KafkaRefused, before, sort_errors
from pipeline.records import Record


def _error(
    code: int, text: str, *, partition: int = 0, offset: int = -1001, fatal: bool = False
) -> tuple[Message, KafkaError]:
    error = KafkaError(code, text, fatal=fatal)
    return Message(topic="t", partition=partition, offset=offset, error=error), error


def test_an_unreadable_batch_keeps_its_first_offset_and_outranks_the_refusal_that_follows_it() -> None:
    sorted_errors = sort_errors(
        [
            _error(KafkaError._BAD_MSG, "MessageSet at offset 100 failed CRC32C check", offset=100),
            # librdkafka 2.16 then reads the next "batch" from the wrong bytes, and fetches from there.
            _error(KafkaError._NOT_IMPLEMENTED, "Unsupported MagicByte 117 at offset 246238096", offset=246238096),
            _error(KafkaError._AUTO_OFFSET_RESET, "offset out of range", offset=246238097),
            _error(KafkaError._AUTO_OFFSET_RESET, "offset out of range", partition=1),
            _error(KafkaError._BAD_COMPRESSION, "Decompression of message at 7 failed", partition=2, offset=7),
        ],
        ["t"],
        "g",
    )
    assert sorted_errors.unreadable == {
        ("t", 0): (100, "MessageSet at offset 100 failed CRC32C check"),
        ("t", 2): (7, "Decompression of message at 7 failed"),
    }
    assert sorted_errors.refused == {("t", 1): "offset out of range"}, "a refusal after an unreadable batch is not news"
    assert not sorted_errors.unknown_topic


def test_the_rest_is_logged_and_a_fatal_or_forbidden_error_ends_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    logged = sort_errors([_error(KafkaError._UNKNOWN_TOPIC, "gone"), _error(KafkaError._TRANSPORT, "down")], ["t"], "g")
    assert logged.unknown_topic and not logged.refused and not logged.unreadable
    assert [record.getMessage() for record in caplog.records] == ["kafka: gone", "kafka: down"]
    with pytest.raises(KafkaRefused, match="grant its principal READ on the topics t and on its group g"):
        sort_errors([_error(KafkaError.TOPIC_AUTHORIZATION_FAILED, "no")], ["t"], "g")
    with pytest.raises(KafkaException):
        sort_errors([_error(KafkaError._FATAL, "fenced", fatal=True)], ["t"], "g")


def test_what_was_read_before_an_unreadable_batch_is_kept() -> None:
    run = [Record("t", 0, offset, None, b"{}") for offset in (95, 97, 99, 104, 105)]
    assert [record.offset for record in before(run, 100)] == [95, 97, 99]
    assert before(run, 95) == [] and before(run, 200) == run
    assert before(run, None) == [] and before(run, -1001) == [], "an offset not known keeps nothing"
