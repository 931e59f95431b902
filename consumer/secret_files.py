"""Credentials read from files, as Kubernetes mounts a Secret: `MICROBATCH_DATABASE_URL_FILE` holds the
database URL, `MICROBATCH_KAFKA_CONFIG_FILE` a JSON object of librdkafka settings (e.g. sasl.password).

A file that is named but missing, unreadable, empty, over 1 MiB or (for kafka_config) not a JSON object of
strings is a ConfigError naming the variable and the path, never the content.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from consumer.environment import SECRET_FILE_ENV
from pipeline.bounded_read import read_at_most

# A database URL or a JSON object of client settings is a few hundred bytes. Reading no more than this
# keeps a path named by mistake (/dev/zero, a log) from being read for ever.
MAX_BYTES = 1024 * 1024


def read_secret_files(
    environ: Mapping[str, str],
    values: dict[str, Any],
    from_env: dict[str, str],
    error: Callable[[str], Exception],
) -> None:
    """Put the settings found in secret files into `values`, over the config file's and the environment's.

    database_url from a file must not also be set by a variable (which one would win is a guess).
    kafka_config from a file is merged key by key over the rest: non-secret settings may stay in the
    config file or MICROBATCH_KAFKA_CONFIG, the credentials in the Secret. `from_env` learns where each
    value came from (the _FILE variable), for error messages. `error` builds the exception to raise.
    """
    for name, var in SECRET_FILE_ENV.items():
        if var not in environ:
            continue
        text = _read(var, Path(environ[var]), error)
        if name == "database_url":
            if name in from_env:
                raise error(f"{name}: both {from_env[name]} and {var} are set; keep one")
            values[name] = text
            from_env[name] = var
            continue
        config = _json_object(var, environ[var], text, error)
        values[name] = {**values[name], **config} if isinstance(values.get(name), dict) else config
        from_env.update({name: var, **{f"{name}.{key}": var for key in config}})


def _read(var: str, path: Path, error: Callable[[str], Exception]) -> str:
    try:
        data = read_at_most(path, MAX_BYTES)
        text = "" if data is None else data.decode("utf-8")
    except FileNotFoundError:
        raise error(f"{var}: the file {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{var}: {path} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise error(f"{var}: the file {path} cannot be read ({reason})") from None
    if data is None:
        raise error(f"{var}: the file {path} is larger than {MAX_BYTES:,} bytes: not a secret of ours")
    # A Secret written by hand usually ends with a newline; no URL or JSON object ends with one on purpose.
    text = text.strip()
    if not text:
        raise error(f"{var}: the file {path} is empty")
    return text


def _json_object(var: str, path: str, text: str, error: Callable[[str], Exception]) -> dict[str, str]:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # (json.loads recurses once per level of nesting)
        raise error(f"{var}: the file {path} is not valid JSON (its content is not shown: it holds secrets)") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise error(f'{var}: the file {path} must hold a JSON object of strings, e.g. {{"sasl.password": "..."}}')
    return value
