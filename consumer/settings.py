"""Every setting of the consumer, from (highest first) the environment, a TOML config file, defaults.

Each field's env var is `MICROBATCH_<NAME>`; the two connection settings also accept the plain
`KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL`. The README's configuration reference is generated from
this model (`microbatch settings-doc`), so the description of a field is its documentation.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from consumer.window import LIMITS

ENV_PREFIX = "MICROBATCH_"
# Environment variables with our prefix that are not settings of the consumer.
KNOWN_NON_SETTINGS = frozenset({"MICROBATCH_FAILPOINTS", "MICROBATCH_CACHE", "MICROBATCH_NO_DOCKER"})


def _env(name: str, *plain: str) -> AliasChoices:
    """Accept `MICROBATCH_<NAME>`, the plain aliases, and the field name itself (config files)."""
    return AliasChoices(ENV_PREFIX + name.upper(), *plain, name)


def window_limit(setting: str) -> Any:
    """The field of a window limit, as consumer.window.LIMITS declares it."""
    limit = next(limit for limit in LIMITS if limit.setting == setting)
    return Field(
        limit.default, ge=limit.minimum, le=limit.maximum, validation_alias=_env(setting), description=limit.description
    )


class ConfigError(Exception):
    """The configuration is invalid; str() names each key, value and reason (never a secret)."""


class Settings(BaseSettings):
    """Runtime configuration. Immutable once loaded."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, populate_by_name=True, case_sensitive=False)

    # -- connections ---------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=_env("kafka_bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka brokers to bootstrap from (host:port, comma-separated).",
    )
    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/microbatch"),
        validation_alias=_env("database_url", "DATABASE_URL"),
        description="libpq URL or key=value DSN of the PostgreSQL database. Never logged.",
    )
    kafka_config: dict[str, str] = Field(
        default_factory=dict,
        validation_alias=_env("kafka_config"),
        description=(
            "Extra librdkafka settings for the consumer and producers (JSON object in the env var), "
            "e.g. security.protocol, sasl.*, ssl.*. Passed through unchanged; settings that would "
            "break delivery guarantees are refused."
        ),
    )

    # -- the pipeline --------------------------------------------------------------------------
    pipeline: str = Field(
        "invoices",
        validation_alias=_env("pipeline"),
        description="Pipeline definition: a TOML file path or a built-in name (invoices, pageviews).",
    )
    group_id: str | None = Field(
        None,
        validation_alias=_env("group_id"),
        description="Consumer group; default: the pipeline's `group`.",
    )
    startup_timeout_s: float = Field(
        10.0, gt=0, validation_alias=_env("startup_timeout_s"),
        description="Time allowed at start for the broker to answer before giving up with an error.",
    )  # fmt: skip
    offsets_table: str = Field(
        "microbatch_offsets",
        validation_alias=_env("offsets_table"),
        description="Table (in the pipeline's schema) holding the stored Kafka positions.",
    )

    # -- windows -------------------------------------------------------------------------------
    max_records: int = window_limit("max_records")
    max_bytes: int = window_limit("max_bytes")
    max_wait_ms: int = window_limit("max_wait_ms")
    consume_batch: int = Field(
        1000, ge=1, le=100_000, validation_alias=_env("consume_batch"),
        description="Messages asked of librdkafka per consume() call.",
    )  # fmt: skip
    overlap_writes: bool = Field(
        True, validation_alias=_env("overlap_writes"),
        description="Write a window in a background thread while the next one is consumed and decoded.",
    )  # fmt: skip
    max_message_bytes: int = Field(
        1024 * 1024, ge=1, validation_alias=_env("max_message_bytes"),
        description="Larger message values are dead-lettered as too_large without being parsed.",
    )  # fmt: skip
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", validation_alias=_env("auto_offset_reset"),
        description="Where a partition starts when it has no stored position, or its topic was re-created.",
    )  # fmt: skip
    on_position_gap: Literal["halt", "skip"] = Field(
        "halt", validation_alias=_env("on_position_gap"),
        description="A stored position outside the log (deleted by retention, beyond a truncated end): halt "
        "until an operator resets it, or skip to the first available offset (audited).",
    )  # fmt: skip
    adopt_kafka_offsets: bool = Field(
        False, validation_alias=_env("adopt_kafka_offsets"),
        description="A partition without a stored position starts at the group's Kafka-committed offset "
        "(when moving a group to microbatch) instead of auto_offset_reset.",
    )  # fmt: skip

    # -- database session ----------------------------------------------------------------------
    statement_timeout_ms: int = Field(
        120_000, ge=0, validation_alias=_env("statement_timeout_ms"),
        description="PostgreSQL statement_timeout for the writer's session (0 = none).",
    )  # fmt: skip
    lock_timeout_ms: int = Field(
        30_000, ge=0, validation_alias=_env("lock_timeout_ms"),
        description="PostgreSQL lock_timeout: a flush waiting longer for a row lock is retried.",
    )  # fmt: skip
    idle_in_transaction_timeout_ms: int = Field(
        60_000, ge=0, validation_alias=_env("idle_in_transaction_timeout_ms"),
        description="PostgreSQL ends a transaction of a frozen consumer after this long, freeing its locks "
        "(0 = never; otherwise above dead_letter_timeout_s).",
    )  # fmt: skip
    db_keepalive_idle_s: int = Field(
        10, ge=1, le=3600, validation_alias=_env("db_keepalive_idle_s"),
        description="TCP keepalives start after this idle time (then every 5 s, 4 probes): a silently dropped "
        "database connection is detected within idle + 20 s.",
    )  # fmt: skip
    db_tcp_user_timeout_ms: int = Field(
        30_000, ge=0, validation_alias=_env("db_tcp_user_timeout_ms"),
        description="A database connection whose sent data stays unacknowledged this long is closed (0 = the "
        "operating system's default).",
    )  # fmt: skip
    max_savepoints: int = Field(
        64, ge=2, le=10_000, validation_alias=_env("max_savepoints"),
        description="Savepoints one flush transaction may use to isolate rejected rows.",
    )  # fmt: skip
    max_bisect_transactions: int = Field(
        8, ge=1, validation_alias=_env("max_bisect_transactions"),
        description="Transactions one flush may use for bisection before writing one message per transaction.",
    )  # fmt: skip

    # -- retries and shutdown ------------------------------------------------------------------
    retry_initial_ms: int = Field(
        200, ge=1, validation_alias=_env("retry_initial_ms"),
        description="First delay before retrying a flush after a transient failure.",
    )  # fmt: skip
    retry_max_ms: int = Field(
        10_000, ge=1, validation_alias=_env("retry_max_ms"),
        description="Longest delay between retries (exponential backoff with full jitter up to this).",
    )  # fmt: skip
    halted_retry_s: float = Field(
        15.0, gt=0, validation_alias=_env("halted_retry_s"),
        description="While halted (systemic failure or breaker open): seconds between attempts to resume.",
    )  # fmt: skip
    exit_on_halt: bool = Field(
        False, validation_alias=_env("exit_on_halt"),
        description="Exit with code 3 instead of waiting when halted (let an orchestrator restart or page).",
    )  # fmt: skip

    # -- dead letters --------------------------------------------------------------------------
    dead_letter_timeout_s: float = Field(
        30.0, gt=0, validation_alias=_env("dead_letter_timeout_s"),
        description="Time allowed for the dead-letter topic to acknowledge a flush's rejected messages.",
    )  # fmt: skip
    breaker_max_ratio: float = Field(
        0.5, gt=0, le=1, validation_alias=_env("breaker_max_ratio"),
        description="The breaker opens when more than this share of the last breaker_window messages is rejected.",
    )  # fmt: skip
    breaker_window: int = Field(
        10_000, ge=1, validation_alias=_env("breaker_window"),
        description="Messages over which the breaker measures the rejected share.",
    )  # fmt: skip
    breaker_min_records: int = Field(
        100, ge=1, validation_alias=_env("breaker_min_records"),
        description="The ratio rule applies only once this many messages were seen.",
    )  # fmt: skip
    breaker_max_consecutive: int = Field(
        1000, ge=1, validation_alias=_env("breaker_max_consecutive"),
        description="The breaker opens when this many messages in a row are rejected.",
    )  # fmt: skip

    # -- observability -------------------------------------------------------------------------
    metrics_port: int = Field(
        9108, ge=0, le=65535, validation_alias=_env("metrics_port"),
        description="Port of the HTTP server for /metrics, /healthz and /readyz (0: pick a free port).",
    )  # fmt: skip
    metrics_host: str = Field(
        "0.0.0.0", validation_alias=_env("metrics_host"),  # noqa: S104 - scraped from other hosts
        description="Address the HTTP server binds to.",
    )  # fmt: skip
    health_stall_s: float = Field(
        120.0, gt=0, validation_alias=_env("health_stall_s"),
        description="/healthz fails when the run loop has not turned for this long.",
    )  # fmt: skip
    shutdown_timeout_s: float = Field(
        30.0, gt=0, validation_alias=_env("shutdown_timeout_s"),
        description="On SIGTERM/SIGINT: time allowed to flush what is buffered, commit and leave the group.",
    )  # fmt: skip

    # -- logs ----------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=_env("log_level"), description="Log level."
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        validation_alias=_env("log_format"),
        description="Log line format: text or one JSON object per line.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats the config file (passed as init values), which beats defaults.
        return env_settings, init_settings, file_secret_settings


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from the environment, then `config_file` (TOML, same keys), then defaults.

    `overrides` (from command-line flags) win over everything. Raises ConfigError with one line per
    problem, naming the key and the reason; secret values are never echoed.
    """
    unknown = sorted(
        key for key in os.environ
        if key.startswith(ENV_PREFIX) and key not in KNOWN_NON_SETTINGS and key.lower() not in _field_env_names()
    )  # fmt: skip
    if unknown:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {key}: unknown setting" for key in unknown))
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {config_file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
    try:
        settings = Settings(**values)
        if overrides:
            settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    except SettingsError as exc:
        # Raised when an env var of a structured setting is not valid JSON.
        found = re.search(r'field "(\w+)"', str(exc))
        name = found.group(1) if found else "(unknown)"
        raise ConfigError(
            f"invalid configuration:\n  {name} (env {ENV_PREFIX}{name.upper()}): not valid JSON for this setting"
        ) from None
    problems = inconsistencies(settings)
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {problem}" for problem in problems))
    return settings


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
    return problems


def _shown_value(name: str, value: object) -> str:
    """The rejected value, when it is short and cannot be a secret."""
    secret = name in {"database_url", "kafka_config"} or any(w in name for w in ("password", "secret", "token"))
    if secret or not isinstance(value, str | int | float | bool) or len(str(value)) > 60:
        return ""
    return f" = {value!r}"


def _field_env_names() -> set[str]:
    return {(ENV_PREFIX + name).lower() for name in Settings.model_fields}


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: the setting, its env var, what is wrong. Never the rejected value."""
    lines = ["invalid configuration:"]
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else "(config)"
        name = key.removeprefix(ENV_PREFIX).lower()
        message = "unknown setting" if error["type"] == "extra_forbidden" else error["msg"]
        shown = _shown_value(name, error.get("input"))
        lines.append(f"  {name} (env {ENV_PREFIX}{name.upper()}){shown}: {message}")
    return "\n".join(lines)
