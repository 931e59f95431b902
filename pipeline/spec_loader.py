"""Load a pipeline definition from TOML, with errors that name the key and the reason."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from pipeline.fields import default_value
from pipeline.spec import PipelineSpec
from pipeline.toml_file import TomlError, read_toml
from pipeline.total_types import lossy_totals

DEFAULT_PIPELINE = "invoices"


class PipelineFileError(Exception):
    """The pipeline file is missing, is not TOML, or breaks a rule; str() lists every problem."""


def builtin_dir() -> Path:
    """Where the shipped pipelines live: `pipeline/builtin/`, the same in a checkout and in the wheel."""
    directory = Path(__file__).resolve().parent / "builtin"
    if not directory.is_dir():
        raise PipelineFileError(f"the built-in pipelines directory {directory} is missing from this installation")
    return directory


def builtin_names() -> list[str]:
    """The names of the built-in pipelines (`--pipeline NAME`)."""
    return sorted(path.stem for path in builtin_dir().glob("*.toml"))


def load_pipeline(source: str | Path | None = None) -> PipelineSpec:
    """Load `source` (a file path, or the name of a built-in pipeline such as 'invoices').

    None loads the default pipeline. Raises PipelineFileError with one line per problem.
    """
    path = _resolve(source)
    try:
        data = read_toml(path)
    except FileNotFoundError:
        raise PipelineFileError(f"pipeline file {path} does not exist") from None
    except TomlError as exc:
        raise PipelineFileError(f"pipeline file {path} {exc}") from None
    spec = parse_pipeline(data, origin=str(path))
    spec._origin = path.resolve().parent
    return spec


def parse_pipeline(data: dict[str, object], origin: str = "<pipeline>") -> PipelineSpec:
    """Validate already-parsed TOML data."""
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise PipelineFileError(f"{origin}: invalid pipeline\n" + format_errors(exc)) from None
    if problems := _refused_defaults(spec) + lossy_totals(spec):
        raise PipelineFileError(f"{origin}: invalid pipeline\n" + "\n".join(problems))
    return spec


def _refused_defaults(spec: PipelineSpec) -> list[str]:
    """A field's default that its own checks refuse: found when the file is read, not by the first
    event without the field (which would find it while the consumer runs)."""
    problems = []
    for name, field in spec.fields.items():
        try:
            default_value(field)
        except (ValueError, TypeError) as exc:  # FieldError is a ValueError
            problems.append(f"  fields.{name}.default: {exc}")
    return problems


def format_errors(exc: ValidationError) -> str:
    """One line per problem: `key.path: reason`."""
    lines = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {location or '(top level)'}: {message}")
    return "\n".join(lines)


def _resolve(source: str | Path | None) -> Path:
    if source is None:
        source = DEFAULT_PIPELINE
    path = Path(source)
    if path.suffix == "" and not path.exists() and "/" not in str(source):
        builtin = builtin_dir() / f"{source}.toml"
        if not builtin.exists():
            raise PipelineFileError(
                f"pipeline {source!r} is neither a file nor a built-in pipeline ({', '.join(builtin_names())})"
            )
        return builtin
    return path
