"""How the dead-letter topic says no: too large, refused for good, or unavailable for now.

* too large (MSG_SIZE_TOO_LARGE): the letter is sent again without its largest parts
  (consumer/dlq_letter.py);
* refused: the topic does not exist (deleted after start-up), the consumer may not write it, the
  producer hit a fatal error, or the configuration is invalid or unsupported. No retry soon will
  change that: the consumer halts (`DeadLetterRefused`) until someone fixes it;
* anything else (timeouts, not enough replicas, leader changes, a broker down) is unavailability:
  retried with backoff (`DeadLetterUnavailable`).

librdkafka reports a deleted topic only as a timeout (it waits for the topic to come back), so a
failure that is not a refusal by itself is followed by one metadata request: a topic the broker says
it does not know, or may not be described, is a refusal too (`topic_problem`).
"""

from __future__ import annotations

from typing import Protocol

from confluent_kafka import KafkaError, KafkaException

TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
MISSING = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION})
FORBIDDEN = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)
UNAUTHENTICATED = frozenset({KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION})
MISCONFIGURED = frozenset(
    {
        KafkaError.INVALID_CONFIG,
        KafkaError._INVALID_ARG,
        KafkaError._INVALID_TYPE,
        KafkaError.INVALID_REQUIRED_ACKS,
        KafkaError._UNSUPPORTED_FEATURE,
        KafkaError.UNSUPPORTED_VERSION,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        KafkaError.UNSUPPORTED_COMPRESSION_TYPE,
        KafkaError.POLICY_VIOLATION,
        KafkaError.INVALID_RECORD,  # e.g. a compacted dead-letter topic and a message without a key
        KafkaError.INVALID_TIMESTAMP,
        KafkaError.TOPIC_EXCEPTION,  # an invalid topic name
    }
)


def too_large(error: KafkaError) -> bool:
    return error.code() in TOO_LARGE


def refusal(error: KafkaError) -> str | None:
    """Why `error` is a permanent refusal (a few words), or None when it is not one by itself."""
    code = error.code()
    if error.fatal() or code == KafkaError._FATAL:
        return f"the producer hit a fatal error ({error.str()}); a new producer is made for the next attempt"
    if code in FORBIDDEN:
        return f"not authorized ({error.str()}); grant the consumer WRITE and DESCRIBE on the topic"
    if code in UNAUTHENTICATED:
        return f"authentication failed ({error.str()}); check the sasl.* and ssl.* settings in kafka_config"
    if code in MISCONFIGURED:
        return f"invalid or unsupported configuration ({error.str()})"
    return None


class Metadata(Protocol):
    """What `topic_problem` needs of a client: confluent_kafka's list_topics."""

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> object: ...


def topic_problem(client: Metadata, topic: str, timeout: float) -> str | None:
    """A refusal when the broker says `topic` does not exist or may not be described; None when it
    exists or the broker did not answer in time (that is unavailability, not a refusal)."""
    try:
        metadata = client.list_topics(topic, timeout=max(timeout, 0.1))
    except KafkaException:
        return None
    found = getattr(metadata, "topics", {}).get(topic)
    error: KafkaError | None = getattr(found, "error", None) if found is not None else None
    if found is None or (error is not None and error.code() in MISSING):
        return "the topic does not exist (deleted after start-up?); create it again"
    if error is not None and error.code() in FORBIDDEN:
        return f"not authorized ({error.str()}); grant the consumer WRITE and DESCRIBE on the topic"
    return None
