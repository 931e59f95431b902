"""How our long-lived Kafka clients reconnect (consumer/kafka_config.py: RECONNECTS): without librdkafka's
re-bootstrap by default, which turned an outage of the only broker into an ERROR line every 50 ms
(tests/integration/test_broker_outage.py), and as the user says when kafka_config says otherwise."""

from __future__ import annotations

import pytest

from consumer.kafka_config import consumer_config, dead_letter_producer_config, producer_config, reconnects
from consumer.settings import Settings


def settings(kafka_config: dict[str, str] | None = None) -> Settings:
    return Settings(kafka_bootstrap_servers="127.0.0.1:9092", kafka_config=kafka_config or {})


def test_every_long_lived_client_reconnects_without_re_bootstrapping_by_default() -> None:
    given = settings()
    for config in (
        consumer_config(given, "g"),
        producer_config(given, "replay"),
        dead_letter_producer_config(given, None),
        reconnects(given),
    ):
        assert config["metadata.recovery.strategy"] == "none", config


@pytest.mark.parametrize("strategy", ["rebootstrap", "none"])
def test_the_user_may_say_otherwise_in_kafka_config(strategy: str) -> None:
    given = settings({"metadata.recovery.strategy": strategy})
    assert consumer_config(given, "g")["metadata.recovery.strategy"] == strategy
    assert dead_letter_producer_config(given, None)["metadata.recovery.strategy"] == strategy
    assert reconnects(given) == {"metadata.recovery.strategy": strategy}, "the admin clients follow it too"


def test_the_admin_clients_take_the_other_metadata_recovery_settings_too() -> None:
    given = settings({"metadata.recovery.rebootstrap.trigger.ms": "60000", "fetch.max.bytes": "1048576"})
    assert reconnects(given) == {
        "metadata.recovery.strategy": "none",
        "metadata.recovery.rebootstrap.trigger.ms": "60000",
    }
