"""`check-config`'s look at the Kafka clients `run` makes: made once and closed before they send anything,
so that a kafka_config librdkafka refuses is found there, not when `run` gets to them."""

from __future__ import annotations

from confluent_kafka import Consumer, Producer

from consumer.app import quiet_logger
from consumer.kafka_clients import made
from consumer.kafka_config import consumer_config, dead_letter_producer_config
from consumer.settings import Settings


def check_clients(settings: Settings, group: str, dead_letter_topic: str | None) -> None:
    """Make (and close) the consumer of `run`, and its dead-letter producer when there is a dead-letter
    topic; ConfigError when librdkafka refuses one."""
    logger = quiet_logger()
    made(Consumer, {**consumer_config(settings, group), "logger": logger}).close()
    if dead_letter_topic is not None:
        made(Producer, {**dead_letter_producer_config(settings, None), "logger": logger})
