"""How an invalid configuration is reported: one line per problem, naming the setting and where it came
from, never a secret value."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError


def _shown_value(name: str, value: object) -> str:
    """The rejected value, when it is short and cannot be a secret."""
    secret = name in {"database_url", "kafka_config"} or any(w in name for w in ("password", "secret", "token"))
    if secret or not isinstance(value, str | int | float | bool) or len(str(value)) > 60:
        return ""
    return f" = {value!r}"


def format_validation_error(
    exc: ValidationError, from_env: Mapping[str, str] | None = None, config_file: Path | None = None
) -> str:
    """One line per problem: the setting and where it came from (its env var, or the config file and
    key), then what is wrong. A value from the environment is shown unless it may be a secret."""
    lines = ["invalid configuration:"]
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "(config)"
        key = ".".join(str(part) for part in error["loc"]) or name
        message = "unknown setting" if error["type"] == "extra_forbidden" else error["msg"]
        var = (from_env or {}).get(key if len(error["loc"]) > 1 else name)
        if var:
            lines.append(f"  {key} (env {var}){_shown_value(name, error.get('input'))}: {message}")
        elif config_file is not None:
            lines.append(f"  config file {config_file}: {key}: {message}")
        else:
            lines.append(f"  {key}: {message}")
    return "\n".join(lines)
