"""Properties of `Decoder.decode`, over generated pipelines (every field type and rule, required,
default, nested paths, Kafka columns), documents aimed at their fields, random and damaged bytes, a
transform hook that returns anything or raises, and Kafka keys, headers and timestamps:

- it never raises, and gives each record exactly one verdict: a row, a rejection or a skip;
- the verdict is the one the rules give (tests/support/field_oracle.py, written apart from the
  product), and what is invalid JSON is what orjson says it is;
- a row's values satisfy their field's rules, and decimals hold the digits written (exactly, in a
  pipeline that reads numbers exactly; up to 15 digits otherwise);
- a rejection names the field that failed and never quotes a value.

`make test` runs 20,000 cases; `make fuzz` (MICROBATCH_FUZZ=1) runs 1,000,000.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.decode import DecodedBatch, Decoder
from pipeline.records import Record, RejectReason
from pipeline.spec import PipelineSpec
from pipeline.spec_loader import load_pipeline, parse_pipeline
from tests.support.decode_cases import ENTROPY, SECRET, TYPES, Entropy, Num, Sources, batch, cases
from tests.support.field_oracle import ABSENT, judge, obeys, reads_exactly

RUNS = 6  # the property tests below, with their parameters: the total is shared between them
COMMON = settings(
    deadline=None,
    database=None,  # nothing written into the work tree; a failure prints its reproduction
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# `make test`: the same 20,000 cases every time; `make fuzz` (MICROBATCH_FUZZ=1): 1,000,000 new ones.
settings.register_profile("decode", COMMON, max_examples=-(-20_000 // RUNS), derandomize=True)
settings.register_profile("decode-fuzz", COMMON, max_examples=-(-1_000_000 // RUNS), derandomize=False)
PROFILE = settings.get_profile("decode-fuzz" if os.environ.get("MICROBATCH_FUZZ") == "1" else "decode")
TIME_ERRORS = (ValueError, OverflowError, OSError)

Expected = tuple[str, Any]  # ("row", values) | ("skip", None) | (reason, (error class, field or None))


def field_value(event: dict[str, Any], path: str) -> Any:
    node: Any = event
    for part in path.split("."):
        if type(node) is not dict or part not in node:
            return ABSENT
        node = node[part]
    return node


def expect(spec: PipelineSpec, record: Record, exact: bool, hook: list[Any] | None) -> Expected:  # noqa: PLR0911, PLR0912 - one return per verdict
    """What decoding `record` must give, from the oracle's rules (not the product's)."""
    value = record.value
    if not value:
        return RejectReason.EMPTY, ("ValidationError", None)
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return RejectReason.INVALID_JSON, ("JSONDecodeError", None)
    if type(event) is not dict:
        return RejectReason.INVALID_EVENT, ("ValidationError", None)
    if exact:
        event = json.loads(value.decode(), parse_float=Decimal)
    if hook is not None:
        outcome, returned = hook.pop(0)
        if outcome == "raised":
            return RejectReason.INVALID_EVENT, (type(returned).__name__, None)
        if returned is None:
            return "skip", None
        if type(returned) is not dict:
            return RejectReason.INVALID_EVENT, ("TransformError", None)
        event = returned
    stored = []
    for name, field in spec.fields.items():
        ok, out = judge(field, field_value(event, field.path or name))
        if not ok:
            return RejectReason.INVALID_EVENT, ("FieldError", name)
        stored.append(out)
    for attribute in dict.fromkeys(c.kafka for c in spec.raw.columns.values() if c.kafka is not None):
        if attribute != "timestamp":
            stored.append(getattr(record, attribute))
        elif record.timestamp_ms is None:
            return RejectReason.INVALID_EVENT, ("FieldError", None)
        else:
            try:
                stored.append(datetime.fromtimestamp(record.timestamp_ms / 1000, tz=UTC))
            except TIME_ERRORS as exc:
                return RejectReason.INVALID_EVENT, (type(exc).__name__, None)
    return "row", stored


def check(spec: PipelineSpec, batch: list[Record], out: DecodedBatch, sources: list[Sources], hook: Any) -> None:
    assert sorted([*out.row_records, *out.rejected_records, *out.skipped]) == list(range(len(batch)))
    for verdicts in (out.row_records, out.rejected_records, out.skipped):
        assert verdicts == sorted(verdicts)
    assert len(out.rows) == len(out.row_records) and len(out.rejections) == len(out.rejected_records)
    assert [row[0] for row in out.rows] == list(range(len(out.rows)))
    exact = reads_exactly(spec.fields)
    rows = dict(zip(out.row_records, out.rows, strict=True))
    rejections = dict(zip(out.rejected_records, out.rejections, strict=True))
    names = list(spec.fields)
    for index, record in enumerate(batch):
        verdict, detail = expect(spec, record, exact, hook)
        if verdict == "row":
            assert index in rows, (index, rejections.get(index))
            row = rows[index]
            assert len(row) == 1 + len(detail)
            for name, got, want in zip(names, row[1:], detail, strict=False):
                field = spec.fields[name]
                assert obeys(field, got), (name, field, got)
                assert _same(field.type, got, want), (name, got, want)
            assert row[1 + len(names) :] == tuple(detail[len(names) :])
            if sources[index] is not None and hook is None:
                _digits_kept(spec, row, sources[index] or {}, exact)
        elif verdict == "skip":
            assert index in out.skipped
        else:
            assert index in rejections, (index, verdict, detail, rows.get(index))
            rejection = rejections[index]
            error_class, field = detail
            assert (rejection.reason, rejection.error_class) == (verdict, error_class), rejection
            if field is not None:
                assert rejection.message.startswith(f"{field}: "), rejection.message
            assert SECRET not in rejection.message
            assert rejection.record is record


def _same(kind: str, got: Any, want: Any) -> bool:
    if kind == "uuid" and got is not None:
        return uuid.UUID(got) == uuid.UUID(want)
    return type(got) is type(want) and got == want


def _digits_kept(spec: PipelineSpec, row: tuple[Any, ...], sources: dict[str, Any], exact: bool) -> None:
    """A decimal written as a JSON number is stored with the digits written."""
    for position, (name, field) in enumerate(spec.fields.items(), start=1):
        source = sources.get(name)
        if field.type != "decimal" or not isinstance(source, Num) or row[position] is None:
            continue
        written = Decimal(source.text)
        digits = len(written.as_tuple().digits)
        if exact or (digits <= 15 and (not written or Decimal("1e-300") < abs(written) < Decimal("1e300"))):
            assert Decimal(row[position]) == written, (source.text, row[position])


def _decode(spec: PipelineSpec, batch: list[Record], transform: Callable[..., Any] | None = None) -> DecodedBatch:
    decoder = Decoder(spec, transform=transform)
    assert decoder.exact == reads_exactly(spec.fields)
    return decoder.decode(batch)


KINDS = {"every type": TYPES, "numbers": ("integer", "decimal", "float"), "decimals": ("decimal",)}
CASES_OF = {name: cases(kinds) for name, kinds in KINDS.items()}


@pytest.mark.parametrize("kinds", list(KINDS))
@PROFILE
@given(data=st.data())
def test_each_record_gets_the_verdict_the_rules_give(kinds: str, data: st.DataObject) -> None:
    spec, records, sources, _ = data.draw(CASES_OF[kinds], label="case")
    check(spec, records, _decode(spec, records), sources, None)


class Boom(Exception):
    pass


def odd_value(e: Entropy) -> Any:
    """What no JSON document holds but a hook can return."""
    return e.pick((
        None, e.between(-(10**400), 10**400), 10**400, -(10**5000), 2**63, Decimal("sNaN"), Decimal("NaN"),
        Decimal("-Infinity"), Decimal("1E+999999"), Decimal(e.between(-(10**30), 10**30)).scaleb(-e.below(40)),
        float("nan"), float("inf"), e.text(4, ("\ud800", "a", "\x00", "\U0001f600")), b"bytes", (1,), object(), True,
    ))  # fmt: skip


@PROFILE
@given(data=st.data())
def test_whatever_the_hook_returns_or_raises_each_record_gets_one_verdict(data: st.DataObject) -> None:
    spec, records, sources, e = data.draw(CASES_OF["every type"], label="case")
    actions = [(e.pick(("same", "skip", "raise", "list", "set")), odd_value(e)) for _ in range(1 + e.below(4))]
    log: list[tuple[str, Any]] = []
    paths = [(f.path or name).split(".")[0] for name, f in spec.fields.items()]

    def hook(event: dict[str, Any]) -> Any:
        action, odd = actions[len(log) % len(actions)]
        returned: Any = {"same": event, "skip": None, "list": [event]}.get(action, event)
        if action == "raise":
            log.append(("raised", Boom("no such customer") if odd is None else ZeroDivisionError()))
            raise log[-1][1]
        if action == "set":
            returned = {**event, paths[len(log) % len(paths)]: odd}
        log.append(("returned", returned))
        return returned

    check(spec, records, _decode(spec, records, hook), sources, log)


def _builtin(exact: bool) -> PipelineSpec:
    if not exact:
        return load_pipeline("invoices")
    data = json.loads(
        json.dumps(load_pipeline("invoices").model_dump(by_alias=True, exclude_defaults=True), default=str)
    )
    data["fields"]["unit_price"] = {"type": "decimal", "precision": 30, "scale": 8, "min": "0"}
    data["raw"]["columns"] |= {"kafka_ts": {"kafka": "timestamp"}, "kafka_key": {"kafka": "key"}}
    return parse_pipeline(data)


BUILTIN = {name: _builtin(name == "exact") for name in ("invoices", "exact")}


def _batches(spec: PipelineSpec) -> st.SearchStrategy[tuple[list[Record], list[Sources]]]:
    return ENTROPY.map(lambda e: batch(e, spec, 6))


BUILTIN_CASES = {name: _batches(spec) for name, spec in BUILTIN.items()}


@pytest.mark.parametrize("name", list(BUILTIN))
@PROFILE
@given(data=st.data())
def test_any_bytes_and_any_kafka_attributes_on_the_builtin_pipeline(name: str, data: st.DataObject) -> None:
    records, sources = data.draw(BUILTIN_CASES[name], label="records")
    check(BUILTIN[name], records, _decode(BUILTIN[name], records), sources, None)


def test_the_runs_share_the_total() -> None:
    assert len(KINDS) + 1 + len(BUILTIN) == RUNS
    assert RUNS * PROFILE.max_examples >= (1_000_000 if PROFILE.derandomize is False else 20_000)
