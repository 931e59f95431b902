"""The compiled row reader (pipeline/row_compiler.py) against the reference it replaces: one extractor
per field. For generated pipelines (every field type and rule, required, defaults, nested paths) and
documents aimed at their fields, both return the same row, or both raise the same error with the
same message. The decoder's own properties (test_decode_properties.py) judge the rows themselves."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from consumer.vendor_workload import VendorInvoiceWorkload, VendorWorkloadOptions
from consumer.workload import InvoiceWorkload, WorkloadOptions
from pipeline import row_compiler
from pipeline.fields import compile_field
from pipeline.lookup_spec import normaliser
from pipeline.row_compiler import compile_row, reference_row
from pipeline.spec_loader import load_pipeline
from pipeline.staged_keys import StagedKey
from tests.support.decode_cases import ENTROPY, Entropy, document, pipeline

RECORD = ("invoice-lines", 3, 99)  # the items of a record that the reader may copy after the fields


def outcome(read: Any, event: Any) -> tuple[str, Any]:
    try:
        return "row", read(event, 7, RECORD)
    except Exception as exc:  # compared as (type, message): what a rejection is made of
        return "raised", (type(exc).__name__, str(exc))


@settings(max_examples=3000, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(e=ENTROPY)
def test_the_compiled_reader_returns_and_raises_what_the_extractors_do(e: Entropy) -> None:
    spec = pipeline(e)
    items: tuple[int, ...] = e.pick(((), (2,), (0, 1, 2)))
    compiled = compile_row(spec.fields, items)
    reference = reference_row(tuple(compile_field(name, fs) for name, fs in spec.fields.items()), items)
    for _ in range(4):
        body, _ = document(e, spec)
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:  # e.g. a number beyond a double: the decoder rejects it first
            continue
        assert outcome(compiled, event) == outcome(reference, event)


@settings(max_examples=1500, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(e=ENTROPY)
def test_lookup_keys_are_staged_after_the_fields_and_raise_what_the_reference_raises(e: Entropy) -> None:
    # Keys on any field, text or not: a value that is not a string, or only blanks, makes the key raise.
    spec = pipeline(e)
    at = sorted({e.below(len(spec.fields)) for _ in range(1 + e.below(2))}) if spec.fields else []

    def keys() -> list[tuple[int, StagedKey]]:  # one memo per reader: neither reads the other's
        return [(i, StagedKey(f"key{i}", normaliser(("trim", "lower")))) for i in at]

    compiled = compile_row(spec.fields, (0, 1, 2), keys())
    reference = reference_row(tuple(compile_field(name, fs) for name, fs in spec.fields.items()), (0, 1, 2), keys())
    for _ in range(4):
        body, _ = document(e, spec)
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            continue
        for _ in range(2):  # the second time, a key's value is in its memo
            assert outcome(compiled, event) == outcome(reference, event)


def test_a_valid_event_is_read_without_any_extractor_with_or_without_staged_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The extractors are the slow way, for a value the inlined checks do not take: a valid event never
    # needs one, and the staged keys' names must not shadow the fields' (a reader that read every
    # field through its extractor would still return the right row, 0.3 µs later).
    calls: list[str] = []

    def counted(name: str, spec: Any) -> Any:
        extract = compile_field(name, spec)

        def extract_counted(event: Any) -> Any:
            calls.append(name)
            return extract(event)

        return extract_counted

    monkeypatch.setattr(row_compiler, "compile_field", counted)
    spec = load_pipeline("vendor-invoices")
    keys = [(2, StagedKey("vendor_name", normaliser(("trim", "lower")))), (3, StagedKey("sku", str.lower))]
    message = next(VendorInvoiceWorkload(VendorWorkloadOptions(count=1, seed=3, bad_ratio=0.0)).messages())
    event = orjson.loads(message.value)
    for staged in ([], keys):
        row = compile_row(spec.fields, (0, 1, 2), staged)(event, 7, RECORD)
        assert calls == [] and row[-3:] == RECORD and len(row) == 1 + len(spec.fields) + len(staged) + 3
    assert row[-5:-3] == (event["vendor"].strip().lower(), event["sku"].lower())


def test_an_invoice_event_reads_to_its_row_and_a_missing_field_is_named() -> None:
    spec = load_pipeline("invoices")
    read = compile_row(spec.fields, (2, 1))
    message = next(InvoiceWorkload(WorkloadOptions(count=1, seed=3, bad_ratio=0.0)).messages())
    event = orjson.loads(message.value)
    kind, row = outcome(read, event)
    assert kind == "row" and row[0] == 7 and row[1] == event["event_id"] and row[5] == event["quantity"]
    assert len(row) == 1 + len(spec.fields) + 2 and row[-2:] == (99, 3)
    kind, (error, text) = outcome(read, {**event, "item_id": None})
    assert (kind, error) == ("raised", "FieldError") and text.startswith("item_id: "), text


def test_readers_of_one_shape_share_their_code_and_keep_their_own_rules() -> None:
    """The generated source is compiled once per text (pipeline.conditions.compiled); the rules reach a
    reader through its own namespace, so two pipelines of one shape read by their own bounds."""
    spec = load_pipeline("invoices")
    narrow = spec.fields["quantity"].model_copy(update={"max": 5})
    loose, tight = compile_row(spec.fields), compile_row({**spec.fields, "quantity": narrow})
    assert loose.__code__ is tight.__code__
    event = orjson.loads(next(InvoiceWorkload(WorkloadOptions(count=1, seed=3)).messages()).value)
    event["quantity"] = 7
    assert outcome(loose, event)[0] == "row"
    kind, (error, text) = outcome(tight, event)
    assert (kind, error) == ("raised", "FieldError") and text.startswith("quantity: "), text
