"""Kafka clients made from the user's settings, with librdkafka's refusal of them as a ConfigError.

librdkafka checks a client's configuration when the client is made: an unknown property, a value of
the wrong kind or out of its range, a CA file that is not there, a private key it cannot decrypt, a
SASL mechanism it was not built with, two settings that contradict each other. Made in the middle of a
command, such a client raised a KafkaException with a traceback; `made` turns the refusal into one
line, with every credential of kafka_config masked in it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka import KafkaException

from consumer.settings import MASK, ConfigError, secret_kafka_key

Client = TypeVar("Client")


def made(kind: Callable[[dict[str, Any]], Client], config: Mapping[str, Any]) -> Client:
    """`kind(config)` (a Consumer, a Producer, an AdminClient); ConfigError when librdkafka refuses `config`."""
    try:
        return kind(dict(config))
    except (KafkaException, TypeError, ValueError) as exc:  # the last two: the binding's own checks (`*_cb`)
        error = exc.args[0] if exc.args else exc
        refusal = error.str() if hasattr(error, "str") else str(error)
        for key, value in config.items():
            if secret_kafka_key(key) and str(value):
                refusal = refusal.replace(str(value), MASK)
        raise ConfigError(f"invalid configuration:\n  kafka_config: the Kafka client refuses it: {refusal}") from None
