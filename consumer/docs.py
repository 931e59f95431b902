"""Reference tables generated from the code: every setting and every metric, for the README.

`python -m consumer.docs --write README.md` replaces the text between the `<!-- settings:begin -->` /
`<!-- settings:end -->` and `<!-- metrics:begin -->` / `<!-- metrics:end -->` markers; a unit test
fails when the README is out of date, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from consumer.environment import ENV_PREFIX
from consumer.metrics import Metrics
from consumer.settings import Settings

_ALIASES = {"kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS", "database_url": "DATABASE_URL"}


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        return "{}"
    value = field.default
    if name == "database_url":
        return "`postgresql://postgres@127.0.0.1:5432/microbatch`"
    if value is None:
        return "(none)"
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def settings_table() -> str:
    """A markdown table of every setting: name, env var(s), default, meaning."""
    lines = ["| setting | env var | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        env = f"`{ENV_PREFIX}{name.upper()}`"
        if name in _ALIASES:
            env += f" or `{_ALIASES[name]}`"
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {env} | {_default(name)} | {description} |")
    return "\n".join(lines)


def metrics_table() -> str:
    """A markdown table of every microbatch metric: name (as scraped), type, labels, meaning."""
    metrics = Metrics(process_metrics=False)
    rows = []
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        kind = str(collector._type)
        suffix = {"counter": "_total", "info": "_info"}.get(kind, "")
        labels = ", ".join(collector._labelnames) or "—"
        rows.append(f"| `{collector._name}{suffix}` | {kind} | {labels} | {collector._documentation} |")
    return "\n".join(["| metric | type | labels | meaning |", "|---|---|---|---|", *sorted(rows)])


def _replacement(table: str) -> Callable[[re.Match[str]], str]:
    return lambda match: f"{match.group(1)}{table}\n{match.group(2)}"


def render(readme: str) -> str:
    """`readme` with both generated sections replaced."""
    for marker, table in (("settings", settings_table()), ("metrics", metrics_table())):
        pattern = re.compile(rf"(<!-- {marker}:begin -->\n).*?(<!-- {marker}:end -->)", re.DOTALL)
        if not pattern.search(readme):
            raise ValueError(f"README has no <!-- {marker}:begin --> / <!-- {marker}:end --> markers")
        readme = pattern.sub(_replacement(table), readme)
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumer.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="update the generated sections of this README in place")
    args = parser.parse_args(argv)
    if args.write is None:
        print(settings_table() + "\n\n" + metrics_table())
        return 0
    args.write.write_text(render(args.write.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
