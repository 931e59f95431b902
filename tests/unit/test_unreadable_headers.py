"""Headers the Kafka client cannot read (a name that is not UTF-8) never crash the consumer: they are
read once, the message's broken copy is replaced, and the dead letter goes without them.

confluent-kafka's part is imitated here (the real one is tested against Kafka in
tests/integration/test_dead_letter_path.py): the first `headers()` raises SystemError and caches a
list holding a NULL, which crashes the interpreter when touched; `BrokenMessage` caches a list that
fails the test when touched instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NoReturn

from consumer.dlq_letter import fit
from pipeline.records import Record, Rejection, RejectReason, headers_of, read_headers


class Poisoned(list[Any]):
    """What confluent-kafka leaves in the message: any read of it would crash the process."""

    def _touched(self, *_: object) -> NoReturn:
        raise AssertionError("the broken headers list was read")

    __iter__ = __len__ = __bool__ = __getitem__ = __repr__ = _touched


class BrokenMessage:
    def __init__(self) -> None:
        self.cached: object = None
        self.reads = 0

    def headers(self) -> object:
        self.reads += 1
        if self.cached is None:
            self.cached = Poisoned()
            raise SystemError("<method 'headers'> returned a result with an exception set")
        return self.cached

    def set_headers(self, headers: object) -> None:
        self.cached = headers


def test_unreadable_headers_read_as_none_again_and_again_without_touching_the_broken_list() -> None:
    message = BrokenMessage()
    assert read_headers(message.headers) is None
    assert not isinstance(message.cached, Poisoned), "the broken list is replaced at once"
    assert read_headers(message.headers) is None and read_headers(message.headers) is None
    assert message.reads == 3


def test_readable_headers_and_plain_pairs_read_as_pairs() -> None:
    assert read_headers(lambda: [("a", b"1"), ("b", None), ("c", "text")]) == (("a", b"1"), ("b", None), ("c", b"text"))
    assert read_headers((("a", b"1"),)) == (("a", b"1"),)
    assert read_headers(lambda: None) == ()


def test_an_accessor_that_raises_without_a_message_to_repair_reads_as_none() -> None:
    def failing() -> object:
        raise SystemError("returned a result with an exception set")

    assert read_headers(failing) is None


def test_the_dead_letter_of_a_message_with_unreadable_headers_keeps_its_value_and_says_why_they_are_missing() -> None:
    message = BrokenMessage()
    record = Record("orders", 2, 41, b"key", b"{not json", message.headers)
    rejection = Rejection(record, RejectReason.INVALID_JSON, "unexpected character", "JSONDecodeError")
    letter = fit(rejection, "group", 1, datetime(2026, 12, 5, tzinfo=UTC), 1_000_000)
    assert letter is not None and letter.omitted == ()
    assert (letter.key, letter.value) == (b"key", b"{not json")
    headers = dict(letter.headers)
    assert headers["dlq.headers.omitted"] == b"true" and headers["dlq.headers.unreadable"] == b"true"
    assert headers["dlq.reason"] == b"invalid_json" and headers["dlq.original.offset"] == b"41"
    assert all(name.startswith("dlq.") for name, _ in letter.headers), "no original header is kept"
    assert headers_of(record) is None, "read again (a retried flush): still unreadable, still no crash"


def test_an_incoming_header_cannot_claim_that_readable_headers_were_unreadable() -> None:
    record = Record("orders", 0, 1, None, b"x", (("dlq.headers.unreadable", b"true"), ("trace", b"t")))
    rejection = Rejection(record, RejectReason.INVALID_JSON, "bad", "JSONDecodeError")
    letter = fit(rejection, "group", 1, datetime(2026, 12, 5, tzinfo=UTC), 1_000_000)
    assert letter is not None
    names = [name for name, _ in letter.headers]
    assert "dlq.headers.unreadable" not in names and "trace" in names
