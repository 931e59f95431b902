"""What librdkafka itself refuses in the configuration, found before anything runs.

librdkafka checks a client's configuration when the client is made: an unknown property, a value of
the wrong kind or out of its range, a CA file that is not there, a private key it cannot decrypt, a
SASL mechanism it was not built with. A client made in the middle of a command raised that as a
KafkaException, with a traceback. `check_clients` makes the consumer and the producer of the settings
once, before anything else, and closes them before they send anything; a refusal is a ConfigError,
one line, with every credential of kafka_config masked in it.
"""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaException, Producer

from consumer.app import quiet_logger
from consumer.kafka_config import check_passthrough, consumer_config, producer_config
from consumer.settings import MASK, ConfigError, Settings, secret_kafka_key


def check_kafka_config(settings: Settings) -> None:
    """Raise ConfigError for a kafka_config that breaks a guarantee (check_passthrough) or that
    librdkafka refuses (check_clients)."""
    check_passthrough(settings.kafka_config)
    check_clients(settings)


def check_clients(settings: Settings) -> None:
    """Make (and close) a consumer and a producer of `settings`; ConfigError when librdkafka refuses one."""
    logger = quiet_logger()
    try:
        Consumer({**consumer_config(settings, "microbatch-config-check"), "logger": logger}).close()
        Producer({**producer_config(settings, "config-check"), "logger": logger})
    except KafkaException as exc:
        error = exc.args[0]
        refusal = error.str() if hasattr(error, "str") else str(error)
        for key, value in settings.kafka_config.items():
            if secret_kafka_key(key) and str(value):
                refusal = refusal.replace(str(value), MASK)
        raise ConfigError(f"invalid configuration:\n  kafka_config: the Kafka client refuses it: {refusal}") from None
