"""Generated cases for the decoder's properties: pipelines over every field type and rule, JSON
documents aimed at their fields (numbers exactly as written, values around every bound), damaged
and random bytes, and Kafka keys, headers and timestamps.

Hypothesis draws one byte string per case and `Entropy` reads every choice from it. A case costs
one hypothesis choice instead of a few hundred (each costs about 40 µs in hypothesis' engine:
20,000 cases then fit in `make test`), and hypothesis still explores, replays and shrinks: bytes
that run out read as zeros, and zero always picks the simplest option, so a smaller byte string is
a simpler case.
"""

from __future__ import annotations

import json
import math
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import orjson
from hypothesis import strategies as st

from pipeline.field_types import FIELD_TYPES, FieldError
from pipeline.records import Record
from pipeline.spec import FieldSpec, PipelineSpec
from pipeline.spec_loader import parse_pipeline
from tests.support.field_oracle import ABSENT

T = TypeVar("T")
TYPES = ("string", "integer", "decimal", "float", "boolean", "uuid", "timestamp", "enum")
KAFKA = ("topic", "partition", "offset", "timestamp", "key")
SECRET = "Zq9secret"  # noqa: S105 - not a password: a marker put in string values: no rejection message may quote it
INT64_EDGES = (0, 1, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 10**20, -(10**25))
FLOAT_EDGES = (0.0, -0.0, 0.1, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 1e16, 123456.789, 1e-7)
CHARACTERS = ("a", "Z", "0", " ", "\x00", "é", "€", "\U0001f600", "\u2028", "\\", '"', "\t", SECRET)
DIGITS = "0123456789"
ODD_TIMESTAMPS = ("yesterday", "2026-13-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "")
ODD_MESSAGES = (None, b"", b"null", b"[]", b'"s"', b"1", b"{}", b"NaN", b"{" * 2000, b"[" * 1025)
TIMESTAMPS_MS = (None, 0, -1, 10**30, -(10**30), 2**64, 253402300799999, 253402300800000)
Sources = dict[str, Any] | None  # the values a generated document holds for each field, as written


@dataclass(frozen=True)
class Num:
    """A JSON number exactly as written."""

    text: str


class Entropy:
    """Choices read from a byte string; 0 (also what an exhausted string reads) is the simplest."""

    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    def __repr__(self) -> str:  # what a failure report shows: enough to replay the case
        return f"Entropy(bytes.fromhex({self._data.rstrip(bytes(1)).hex()!r}))"

    def below(self, n: int) -> int:
        if n <= 1:
            return 0
        width = ((n - 1).bit_length() + 7) // 8
        chunk = self._data[self._at : self._at + width]
        self._at += width
        return int.from_bytes(chunk, "big") % n

    def between(self, low: int, high: int) -> int:
        return low + self.below(high - low + 1)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def maybe(self, one_in: int = 2) -> bool:
        return self.below(one_in) == one_in - 1

    def raw(self, size: int) -> bytes:
        chunk = self._data[self._at : self._at + size].ljust(size, b"\0")
        self._at += size
        return chunk

    def text(self, most: int, characters: Sequence[str] = CHARACTERS) -> str:
        return "".join(self.pick(characters) for _ in range(self.below(most + 1)))


def dump(value: Any) -> str:
    """JSON text of `value`, with `Num`s as written (the standard library would round them)."""
    if isinstance(value, Num):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


# -- values -------------------------------------------------------------------------------------------


def number_text(e: Entropy, bounds: Sequence[Decimal] = ()) -> str:
    """Any JSON number: small, at the int64 edges, any double, many digits, exponents, near a bound."""
    choice = e.below(6)
    if choice == 0:
        return str(e.between(-1000, 1000))
    if choice == 1:
        return str(e.pick(INT64_EDGES))
    if choice == 2:
        number = e.pick(FLOAT_EDGES) if e.maybe() else struct.unpack("<d", e.raw(8))[0]
        return repr(number if math.isfinite(number) else 1.5)
    if choice == 3 and bounds:
        bound, step = e.pick(bounds), e.pick((Decimal(0), Decimal(1), Decimal("0.5"), Decimal("1e-9"), Decimal("1e-4")))
        return format(bound + step if e.maybe() else bound - step, "f")
    whole = "0" if e.maybe(4) else e.pick(DIGITS[1:]) + e.text(44, DIGITS)
    fraction = "." + e.pick(DIGITS) + e.text(29, DIGITS) if e.maybe() else ""
    exponent = e.pick(("", "", f"e{e.between(-40, 40)}", "E+400", "e-400", "e-20000"))
    return e.pick(("", "-")) + whole + fraction + exponent


def json_junk(e: Entropy) -> Any:
    return e.pick((None, ABSENT, True, False, e.between(-(2**70), 2**70), e.text(4), [1, "a"], {"a": 1}))


def timestamp_text(e: Entropy) -> str:
    if e.maybe(4):
        return e.pick(ODD_TIMESTAMPS)
    date = f"{e.between(1, 9999):04d}-{e.between(1, 12):02d}-{e.between(1, 28):02d}"
    time = f"{e.between(0, 23):02d}:{e.between(0, 59):02d}:{e.between(0, 59):02d}" + e.pick(("", ".123", ".123456"))
    offset = e.pick(("Z", "+00:00", "", f"{e.pick('+-')}{e.between(0, 23):02d}:{e.pick(('00', '30', '45'))}"))
    return e.pick((f"{date}T{time}{offset}", f"{date} {time}{offset}", date))


def field_value(e: Entropy, spec: FieldSpec) -> Any:  # noqa: PLR0911 - one return per type
    """A value aimed at one field: valid ones, ones at its bounds, and anything else JSON holds."""
    if e.maybe(5):
        return json_junk(e)
    kind = spec.type
    if kind in {"integer", "decimal", "float"}:
        bounds = [b for b in (spec.min, spec.max, spec.min_exclusive, spec.max_exclusive) if b is not None]
        return Num(number_text(e, bounds))
    if kind == "string":
        exact = "x" * e.pick((spec.min_length or 0, spec.max_length or 1, (spec.max_length or 1) + 1))
        return e.pick((e.text((spec.max_length or 6) + 2), exact, SECRET + "\x00"))
    if kind == "uuid":
        u = str(uuid.UUID(bytes=e.raw(16)))
        return e.pick((u, u.upper(), "{" + u + "}", u.replace("-", ""), "urn:uuid:" + u, u[:-1] + "g", u[:-1]))
    if kind == "timestamp":
        return timestamp_text(e)
    if kind == "enum":
        return e.text(3) if e.maybe(4) else e.pick(spec.values or ("",))
    return e.pick((True, False))


# -- pipelines ----------------------------------------------------------------------------------------


def bound(e: Entropy) -> Decimal | None:
    if not e.maybe(3):
        return None
    choice = e.below(3)
    if choice == 0:
        return Decimal(e.between(-1000, 1000))
    if choice == 1:
        return e.pick([Decimal(n) for n in INT64_EDGES[:5]] + [Decimal("0.5"), Decimal("-0.5"), Decimal("9.99")])
    return Decimal(e.between(-(10**24), 10**24)).scaleb(-4)


def field_spec(e: Entropy, kind: str) -> FieldSpec:
    rules: dict[str, Any] = {"type": kind}
    if kind == "string":
        low, high = e.pick((None, 0, 1, 2, 4)), e.pick((None, 1, 3, 5, 8))
        rules.update(min_length=low, max_length=None if high is None else max(high, low or 1))
    if kind in {"integer", "decimal", "float"}:
        least, most = bound(e), bound(e)
        if least is not None and most is not None and least > most:
            least, most = most, least
        rules.update(min=least, max=most, min_exclusive=bound(e), max_exclusive=bound(e), nonzero=e.maybe(3))
    if kind == "decimal":
        precision, scale = e.pick((None, 20, 14, 15, 16, 38, 1, 4, 10)), e.pick((None, 0, 1, 2, 4, 8, 12))
        rules.update(precision=precision, scale=None if scale is None else min(scale, precision or scale))
    if kind == "enum":
        rules["values"] = tuple(dict.fromkeys(e.text(3, CHARACTERS[:-1]) for _ in range(1 + e.below(4))))
    rules.update(path=e.pick((None, None, "n.a", "n.b.c")), required=not e.maybe(3))
    spec = FieldSpec.model_validate(rules)
    if not spec.required and e.maybe():
        candidate = field_value(e, spec)
        if candidate is not None and candidate is not ABSENT:
            try:
                default = orjson.loads(dump(candidate))  # as a pipeline file would give it
                FIELD_TYPES[kind].check(spec)(default)
            except (FieldError, ValueError):  # not a valid default: the pipeline would not start
                return spec
            spec = FieldSpec.model_validate({**rules, "default": default})
    return spec


def pipeline(e: Entropy, kinds: Sequence[str] = TYPES) -> PipelineSpec:
    fields = {f"f{n}": field_spec(e, e.pick(kinds)) for n in range(1 + e.below(3))}
    columns: dict[str, Any] = {name: name for name in fields}
    columns.update({f"k_{a}": {"kafka": a} for a in KAFKA if e.maybe(4)})
    never_null = [name for name, f in fields.items() if f.required or f.default is not None]
    if never_null and not e.maybe(3):
        key = [e.pick(never_null)]
    else:
        columns.update({f"k_{a}": {"kafka": a} for a in ("topic", "partition", "offset")})
        key = ["k_topic", "k_partition", "k_offset"]
    data: dict[str, object] = {
        "name": "p", "topics": ["t"], "group": "g",
        "fields": {name: f.model_dump(exclude_defaults=True) | {"type": f.type} for name, f in fields.items()},
        "raw": {"table": "r", "columns": columns, "dedupe_key": key},
    }  # fmt: skip
    return parse_pipeline(data)


# -- documents and records ------------------------------------------------------------------------------


def document(e: Entropy, spec: PipelineSpec) -> tuple[bytes, Sources]:
    """An event holding a value for each field at its path (or not), plus unrelated keys."""
    values = {name: field_value(e, field) for name, field in spec.fields.items()}
    event: dict[str, Any] = {f"x_{e.text(3)}": e.between(-5, 5) for _ in range(e.below(3))}
    for name, value in values.items():
        if value is ABSENT:
            continue
        *parents, last = (spec.fields[name].path or name).split(".")
        node = event
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return dump(event).encode(), {name: _at(event, spec.fields[name].path or name) for name in values}


def _at(event: dict[str, Any], path: str) -> Any:
    """The value a path holds (two fields may share one: the last one written is there)."""
    node: Any = event
    for part in path.split("."):
        node = node.get(part, ABSENT) if type(node) is dict else ABSENT
    return node


def message_value(e: Entropy, spec: PipelineSpec) -> tuple[Any, Sources]:
    """Mostly a document; else empty, other JSON, random bytes, or a damaged document."""
    choice = e.below(10)
    if choice <= 5:
        return document(e, spec)
    if choice == 6:
        return e.pick(ODD_MESSAGES), None
    if choice == 7:
        return e.raw(e.below(41)), None
    base, _ = document(e, spec)
    cut = e.below(len(base) + 1)
    return base[:cut] + e.raw(e.below(4)) + base[cut + e.below(3) :], None


def timestamp_ms(e: Entropy) -> int | None:
    choice = e.below(5)
    if choice == 0:
        return 1_700_000_000_000 + e.between(-(10**12), 10**12)
    if choice == 1:
        return e.between(10**15, 2 * 10**15)  # microseconds
    if choice == 2:
        return e.between(-(2**63), 2**63)
    return e.pick(TIMESTAMPS_MS)


def batch(e: Entropy, spec: PipelineSpec, most: int = 4) -> tuple[list[Record], list[Sources]]:
    """Records of one partition at consecutive offsets, and the values their documents hold."""
    records, sources = [], []
    for n in range(1 + e.below(most)):
        value, source = message_value(e, spec)
        key = None if e.maybe(4) else e.raw(e.below(9))
        headers = tuple((e.text(3), e.raw(e.below(4)) if e.maybe() else None) for _ in range(e.below(3)))
        records.append(Record("t", 3, 100 + n, key, value, headers, timestamp_ms(e)))
        sources.append(source)
    return records, sources


ENTROPY = st.binary(min_size=1024, max_size=1024).map(Entropy)


def cases(kinds: Sequence[str] = TYPES) -> st.SearchStrategy[tuple[PipelineSpec, list[Record], list[Sources], Entropy]]:
    """(pipeline, batch, sources, the entropy left for the test's own choices)."""

    def build(e: Entropy) -> tuple[PipelineSpec, list[Record], list[Sources], Entropy]:
        spec = pipeline(e, kinds)
        return (spec, *batch(e, spec), e)

    return ENTROPY.map(build)
