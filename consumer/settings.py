"""Every setting of the consumer, from (highest first) secret files, the environment, a TOML config file,
defaults.

The environment is read by explicit names only: `MICROBATCH_<NAME>` for every setting, plus the plain
`KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL`, and the credentials' files (consumer.secret_files). A bare
`LOG_LEVEL` or a Kubernetes service link such as `METRICS_PORT=tcp://10.0.0.1:9108` is not ours and is
ignored. The config file (`--config`, else `MICROBATCH_CONFIG`) uses the plain setting names. The README's
configuration reference is generated from this model (`make docs`), so a field's description is its doc.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from consumer.environment import (
    CONFIG_ENV,
    ENV_PREFIX,
    KNOWN_NON_SETTINGS,
    env_names,
    is_service_link,
    is_service_link_value,
)
from consumer.secret_files import read_secret_files
from consumer.settings_errors import format_validation_error
from consumer.window import LIMITS
from pipeline.toml_file import TomlError, read_toml

# A connect attempt and a round trip on top of the longest single wait of one flush step: the liveness
# probe must allow that much beyond max(statement_timeout_ms, dead_letter_timeout_s).
LIVENESS_MARGIN_S = 30.0
# kafka_config keys whose values are credentials (sasl.password, ssl.key.password, sasl.jaas.config,
# sasl.oauthbearer.client.secret, private keys in PEM…): masked in repr() and never shown in errors.
_SECRET_WORDS = ("password", "secret", "passphrase", "jaas", "token", "credential", "oauthbearer.config")
MASK = "**********"


def secret_kafka_key(key: str) -> bool:
    """True for a librdkafka property whose value is a credential."""
    key = key.lower()
    return any(word in key for word in _SECRET_WORDS) or (key.endswith(".pem") and "key" in key)


def masked_kafka_config(config: Mapping[str, str]) -> dict[str, str]:
    return {key: MASK if secret_kafka_key(key) else value for key, value in config.items()}


def window_limit(setting: str) -> Any:
    """The field of a window limit, as consumer.window.LIMITS declares it."""
    limit = next(limit for limit in LIMITS if limit.setting == setting)
    return Field(limit.default, ge=limit.minimum, le=limit.maximum, description=limit.description)


class ConfigError(Exception):
    """The configuration is invalid; str() names each key, where it came from and the reason (never a secret)."""


class Settings(BaseModel):
    """Runtime configuration, keyed by the plain setting names. Immutable once loaded (load_settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **values: Any) -> None:
        # Plain values (config file, env strings, tests): pydantic converts them, e.g. a str into SecretStr.
        super().__init__(**values)

    # -- connections ---------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        description="Kafka brokers to bootstrap from (host:port, comma-separated).",
    )
    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/microbatch"),
        description="libpq URL or key=value DSN of the PostgreSQL database. Never logged.",
    )
    kafka_config: dict[str, str] = Field(  # values of secret keys are masked in repr() and errors
        default_factory=dict,
        description=(
            "Extra librdkafka settings for the consumer and producers (JSON object in the env var), "
            "e.g. security.protocol, sasl.*, ssl.*. Passed through unchanged; settings that would "
            "break delivery guarantees are refused."
        ),
    )

    # -- the pipeline --------------------------------------------------------------------------
    pipeline: str = Field(
        "invoices",
        description="Pipeline definition: a TOML file path or a built-in name (invoices, pageviews).",
    )
    group_id: str | None = Field(
        None,
        description="Consumer group; default: the pipeline's `group`.",
    )
    startup_timeout_s: float = Field(
        0.0, ge=0,
        description="At start, how long to wait for PostgreSQL and Kafka to become available before giving up "
        "with exit code 4; 0 = wait forever (the pod stays up, /readyz answers 503 with the reason).",
    )  # fmt: skip
    offsets_table: str = Field(
        "microbatch_offsets",
        description="Table (in the pipeline's schema) holding the stored Kafka positions.",
    )

    # -- windows -------------------------------------------------------------------------------
    max_records: int = window_limit("max_records")
    max_bytes: int = window_limit("max_bytes")
    max_wait_ms: int = window_limit("max_wait_ms")
    consume_batch: int = Field(
        1000, ge=1, le=100_000,
        description="Messages asked of librdkafka per consume() call.",
    )  # fmt: skip
    overlap_writes: bool = Field(
        True,
        description="Write a window in a background thread while the next one is consumed and decoded.",
    )  # fmt: skip
    max_message_bytes: int = Field(
        1024 * 1024, ge=1,
        description="Larger message values are dead-lettered as too_large without being parsed.",
    )  # fmt: skip
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest",
        description="Where a partition starts when it has no stored position, or its topic was re-created.",
    )  # fmt: skip
    on_position_gap: Literal["halt", "skip"] = Field(
        "halt",
        description="A stored position outside the log (deleted by retention, beyond a truncated end): halt "
        "until an operator resets it, or skip to the first available offset (audited).",
    )  # fmt: skip
    adopt_kafka_offsets: bool = Field(
        False,
        description="A partition without a stored position starts at the group's Kafka-committed offset "
        "(when moving a group to microbatch) instead of auto_offset_reset. Turn it off once every partition "
        "has a stored position: a first row lost with the last commits (a failover to an asynchronous standby) "
        "would start at a Kafka commit that outlived the rows it stood for.",
    )  # fmt: skip

    # -- database session ----------------------------------------------------------------------
    statement_timeout_ms: int = Field(
        120_000, ge=0,
        description="PostgreSQL statement_timeout for the writer's session; 0 (no bound) is refused, and the "
        "longer of this and dead_letter_timeout_s plus 30 s must stay below health_stall_s.",
    )  # fmt: skip
    lock_timeout_ms: int = Field(
        30_000, ge=0,
        description="PostgreSQL lock_timeout: a flush waiting longer for a row lock is retried.",
    )  # fmt: skip
    idle_in_transaction_timeout_ms: int = Field(
        60_000, ge=0,
        description="PostgreSQL ends a transaction of a frozen consumer after this long, freeing its locks "
        "(0 = never; otherwise above dead_letter_timeout_s).",
    )  # fmt: skip
    db_keepalive_idle_s: int = Field(
        10, ge=1, le=3600,
        description="TCP keepalives start after this idle time (then every 5 s, 4 probes): a silently dropped "
        "database connection is detected within idle + 20 s.",
    )  # fmt: skip
    db_tcp_user_timeout_ms: int = Field(
        30_000, ge=0,
        description="A database connection whose sent data stays unacknowledged this long is closed (0 = the "
        "operating system's default).",
    )  # fmt: skip
    max_savepoints: int = Field(
        64, ge=2, le=10_000,
        description="Savepoints one flush transaction may use to isolate rejected rows.",
    )  # fmt: skip
    max_bisect_transactions: int = Field(
        8, ge=1,
        description="Transactions one flush may use for bisection over all its remaining rows; after them, each "
        "transaction takes a slice of max_savepoints rows.",
    )  # fmt: skip
    lookup_cache_keys: int = Field(
        100_000, ge=0,
        description="Natural keys per lookup remembered as having a committed reference row: a window whose keys "
        "are all known skips the lookup's statement (ids are always read from the table). 0 = off.",
    )  # fmt: skip
    durability: Literal["fsync", "replay"] = Field(
        "fsync",
        description="fsync: a flush's COMMIT returns once PostgreSQL has its WAL on disk. replay: the flush "
        "transaction runs with synchronous_commit = off, so a database crash may lose the last commits, rows "
        "and positions together, and those messages are read again from Kafka (needs auto_offset_reset = "
        "earliest and adopt_kafka_offsets = false).",
    )  # fmt: skip

    # -- retries and shutdown ------------------------------------------------------------------
    retry_initial_ms: int = Field(
        200, ge=1,
        description="First delay before retrying a flush after a transient failure.",
    )  # fmt: skip
    retry_max_ms: int = Field(
        10_000, ge=1,
        description="Longest delay between retries (exponential backoff with full jitter up to this).",
    )  # fmt: skip
    halted_retry_s: float = Field(
        15.0, gt=0,
        description="While halted (systemic failure or breaker open): seconds between attempts to resume.",
    )  # fmt: skip
    exit_on_halt: bool = Field(
        False,
        description="Exit with code 3 instead of waiting when halted (let an orchestrator restart or page).",
    )  # fmt: skip

    # -- dead letters --------------------------------------------------------------------------
    dead_letter_timeout_s: float = Field(
        30.0, gt=0,
        description="Time allowed for the dead-letter topic to acknowledge a flush's rejected messages.",
    )  # fmt: skip
    breaker_max_ratio: float = Field(
        0.5, gt=0, le=1,
        description="The breaker opens when more than this share of the last breaker_window messages is rejected.",
    )  # fmt: skip
    breaker_window: int = Field(
        10_000, ge=1,
        description="Messages over which the breaker measures the rejected share.",
    )  # fmt: skip
    breaker_min_records: int = Field(
        100, ge=1,
        description="The ratio rule applies only once this many messages were seen.",
    )  # fmt: skip
    breaker_max_consecutive: int = Field(
        1000, ge=1,
        description="The breaker opens when this many messages in a row are rejected.",
    )  # fmt: skip

    # -- observability -------------------------------------------------------------------------
    metrics_port: int = Field(
        9108, ge=0, le=65535,
        description="Port of the HTTP server for /metrics, /healthz and /readyz (0: pick a free port).",
    )  # fmt: skip
    metrics_host: str = Field(
        "0.0.0.0",  # noqa: S104 - scraped from other hosts
        description="Address the HTTP server binds to: 0.0.0.0 (every IPv4 address), :: (every address, IPv4 "
        "and IPv6: single-stack IPv6 clusters), or one address (an IPv6 one written as such, not a host name).",
    )  # fmt: skip
    health_stall_s: float = Field(
        180.0, gt=0,
        description="/healthz fails when the run loop has not turned for this long; must exceed the longer of "
        "statement_timeout_ms and dead_letter_timeout_s by more than 30 s.",
    )  # fmt: skip
    shutdown_timeout_s: float = Field(
        30.0, gt=0,
        description="On SIGTERM/SIGINT: time allowed to flush what is buffered, commit and leave the group.",
    )  # fmt: skip

    # -- logs ----------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log line format: text or one JSON object per line.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() of the settings end up in logs and tracebacks: no credential of kafka_config.
        for name, value in super().__repr_args__():
            yield name, masked_kafka_config(value) if name == "kafka_config" else value


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from the environment, then `config_file` (TOML, same keys), then defaults.

    Without `config_file`, MICROBATCH_CONFIG names it. `overrides` (from command-line flags) win over
    everything. Raises ConfigError with one line per problem, naming the setting, where it came from (the
    env var, or the config file and key) and the reason; secret values are never echoed.
    """
    environ = {key: key for key in os.environ}  # exact names: `microbatch_log_level` is not ours
    unknown = sorted(
        key for key in os.environ
        if key.startswith(ENV_PREFIX) and key not in KNOWN_NON_SETTINGS | _prefixed_names()
        and not is_service_link(key, os.environ[key])
    )  # fmt: skip
    if unknown:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {key}: unknown setting" for key in unknown))
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = Path(os.environ[CONFIG_ENV])
    values = _read_config_file(config_file) if config_file is not None else {}
    from_env = _read_environment(environ, values)
    read_secret_files(os.environ, values, from_env, lambda problem: ConfigError(f"invalid configuration:\n  {problem}"))
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, from_env, config_file)) from None
    if overrides:
        settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    problems = inconsistencies(settings)
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {problem}" for problem in problems))
    return settings


def _read_environment(environ: Mapping[str, str], values: dict[str, Any]) -> dict[str, str]:
    """Put the settings found in the environment into `values` (over the config file's); return where each
    came from: setting (and, for a JSON object, setting.key) → env var."""
    from_env: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        var = next((environ[candidate] for candidate in env_names(name) if candidate in environ), None)
        if var is None:
            continue
        from_env[name] = var
        value: Any = os.environ[var]
        if is_service_link_value(value):
            raise ConfigError(
                f"invalid configuration:\n  {name} (env {var}) = {value!r}: a Kubernetes service link (a Service "
                "whose name makes this variable), not a setting; set enableServiceLinks: false on the pod"
            )
        if get_origin(field.annotation) is dict:  # structured settings are JSON in the environment
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(
                    f"invalid configuration:\n  {name} (env {var}): not valid JSON for this setting"
                ) from None
            except RecursionError:  # json.loads recurses once per level of nesting
                raise ConfigError(
                    f"invalid configuration:\n  {name} (env {var}): not valid JSON for this setting (nested too deeply)"
                ) from None
            if isinstance(value, dict):  # merged key by key: e.g. the password from a Secret, the rest from the file
                from_env.update({f"{name}.{key}": var for key in value})
                value = {**values[name], **value} if isinstance(values.get(name), dict) else value
        values[name] = value
    return from_env


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        values = read_toml(path)
    except FileNotFoundError:
        named = f" (named by {CONFIG_ENV})" if os.environ.get(CONFIG_ENV) == str(path) else ""
        raise ConfigError(f"config file {path} does not exist{named}") from None
    except TomlError as exc:
        raise ConfigError(f"config file {path} {exc}") from None
    unknown = sorted(key for key in values if key not in Settings.model_fields)
    if unknown:
        raise ConfigError("invalid configuration:\n" + "\n".join(
            f"  config file {path}: {key}: unknown setting (keys are the plain setting names)" for key in unknown
        ))  # fmt: skip
    return values


def inconsistencies(settings: Settings) -> list[str]:
    """Settings that are each valid but contradict one another, one sentence each."""
    problems = []
    idle_ms, dead_letter_ms = settings.idle_in_transaction_timeout_ms, settings.dead_letter_timeout_s * 1000
    if idle_ms and idle_ms <= dead_letter_ms:
        # A flush waits for the dead-letter acknowledgements inside its open transaction.
        problems.append(
            f"idle_in_transaction_timeout_ms ({idle_ms}) must exceed dead_letter_timeout_s "
            f"({settings.dead_letter_timeout_s:g} s): a flush waits for the dead-letter topic inside its "
            "transaction, and PostgreSQL would end that transaction first"
        )
    if settings.retry_initial_ms > settings.retry_max_ms:
        problems.append(
            f"retry_initial_ms ({settings.retry_initial_ms}) must not exceed retry_max_ms ({settings.retry_max_ms})"
        )
    if settings.durability == "replay" and (settings.adopt_kafka_offsets or settings.auto_offset_reset != "earliest"):
        # A crash may lose a partition's first stored row: it must start again where its messages are.
        problems.append(
            "durability = replay needs auto_offset_reset = earliest and adopt_kafka_offsets = false: a database "
            "crash may lose a partition's first stored position, and it must then start again at the log's "
            "beginning, not at the end or at a Kafka commit that outlived the rows"
        )
    problems += _liveness_problems(settings)
    return problems


def _liveness_problems(settings: Settings) -> list[str]:
    """health_stall_s must outlast the longest single blocking step of a legitimate flush."""
    stall = settings.health_stall_s
    if settings.statement_timeout_ms == 0:
        return [
            f"statement_timeout_ms = 0 (no bound) is refused: a statement without a bound could outlast "
            f"health_stall_s ({stall:g} s) and get a healthy consumer killed by its liveness probe"
        ]
    longest = max(settings.statement_timeout_ms / 1000, settings.dead_letter_timeout_s)
    if stall <= longest + LIVENESS_MARGIN_S:
        return [
            f"health_stall_s ({stall:g} s) must exceed the longer of statement_timeout_ms "
            f"({settings.statement_timeout_ms}) and dead_letter_timeout_s ({settings.dead_letter_timeout_s:g} s) "
            f"plus {LIVENESS_MARGIN_S:g} s (= {longest + LIVENESS_MARGIN_S:g} s): a flush may block the loop that "
            "long, and the liveness probe would kill a healthy consumer"
        ]
    return []


def _prefixed_names() -> frozenset[str]:
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)
