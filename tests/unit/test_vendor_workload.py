"""The vendor-invoice generator (consumer/vendor_workload.py) and how `microbatch produce` chooses a
generator by the pipeline's name (consumer/generators.py).

Expected totals are checked against a recomputation from the produced bytes alone (JSON read with
exact decimals, normalised here), never against numbers written into the test.
"""

from __future__ import annotations

import io
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumer.cli import main
from consumer.generators import GENERATED_PIPELINES, NoGenerator, new_workload, workload_options
from consumer.produce import Ledger, ProduceResult
from consumer.vendor_workload import (
    VENDOR_BAD_KINDS,
    VendorInvoiceWorkload,
    VendorWorkloadOptions,
    item_universe,
    normalise,
    variant,
)
from consumer.workload import InvoiceWorkload, Message, WorkloadOptions
from devstack.demo import DEMOS
from pipeline.decode import Decoder
from pipeline.records import Record
from pipeline.spec_loader import builtin_dir, load_pipeline
from tests.support.oracle import entry_bytes, entry_headers, read_ledger

OPTIONS = VendorWorkloadOptions(count=6000, seed=7, bad_ratio=0.05, duplicate_ratio=0.03, items=120, vendors=5)
SPELLING = re.compile(r" *[A-Za-z0-9-]+ *")  # what the generator may put in `vendor` and `sku`


def generate(options: VendorWorkloadOptions = OPTIONS) -> tuple[VendorInvoiceWorkload, list[Message]]:
    workload = VendorInvoiceWorkload(options)
    return workload, list(workload.messages())


def postgres_normalised(text: str) -> str:
    """lower(btrim(x, E' \\t\\r\\n')), as the lookups normalise in SQL."""
    return text.strip(" \t\r\n").lower()


def firsts(messages: list[Message]) -> list[dict[str, Any]]:
    """The good events as sent first (a producer duplicate re-sends one), read with exact decimals."""
    seen: dict[str, dict[str, Any]] = {}
    for message in messages:
        if message.good:
            event = json.loads(message.value, parse_float=Decimal)
            seen.setdefault(event["event_id"], event)
    return list(seen.values())


def test_the_same_seed_gives_the_same_messages_and_another_seed_others() -> None:
    first, messages = generate()
    again, repeated = generate()
    assert [(m.key, m.value, m.headers, m.kind) for m in messages] == [
        (m.key, m.value, m.headers, m.kind) for m in repeated
    ]
    assert first.totals.to_json() == again.totals.to_json()
    _, other = generate(replace(OPTIONS, seed=8))
    assert [m.value for m in other] != [m.value for m in messages]


def test_the_mix_adds_up_and_duplicates_resend_good_messages() -> None:
    workload, messages = generate()
    totals = workload.totals
    assert len(messages) == totals.messages == OPTIONS.count
    assert totals.good + totals.duplicates + totals.bad == OPTIONS.count
    assert totals.duplicates > 0 and totals.bad > 0
    good = [m for m in messages if m.good]
    assert len(good) == totals.good + totals.duplicates
    assert len({m.event_id for m in good}) == totals.good
    assert all(m.event_id is None for m in messages if not m.good)


def test_variant_spellings_differ_only_by_case_and_outer_spaces() -> None:
    rng = random.Random(3)
    for canonical in ("Acme", "Stark-Industries", "SKU-0042", "Vendor-012", "sku-7"):
        spellings = {variant(rng, canonical) for _ in range(200)}
        assert canonical not in spellings
        assert len(spellings) > 5
        for spelled in spellings:
            assert SPELLING.fullmatch(spelled), spelled
            assert normalise(spelled) == postgres_normalised(spelled) == canonical.lower()


def test_a_share_of_events_spell_vendor_or_sku_differently_and_all_merge_into_the_universe() -> None:
    workload, messages = generate()
    canonical = {(item.vendor, item.sku) for item in item_universe(OPTIONS.vendors, OPTIONS.items)}
    universe = set(workload.universe())
    events = firsts(messages)
    varied = [e for e in events if (e["vendor"], e["sku"]) not in canonical]
    assert 0.10 <= len(varied) / len(events) <= 0.20
    vendors, skus = {v for v, _ in canonical}, {s for _, s in canonical}
    assert any(e["vendor"] not in vendors for e in varied) and any(e["sku"] not in skus for e in varied)
    assert any(e["vendor"] != e["vendor"].strip(" ") for e in varied)  # spaces around
    assert any(e["sku"] == e["sku"].strip(" ") and e["sku"] not in skus for e in varied)  # case alone
    spellings: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for event in events:
        assert SPELLING.fullmatch(event["vendor"]) and SPELLING.fullmatch(event["sku"])
        key = (postgres_normalised(event["vendor"]), postgres_normalised(event["sku"]))
        assert key in universe
        spellings.setdefault(key, set()).add((event["vendor"], event["sku"]))
    assert max(len(found) for found in spellings.values()) > 1  # several spellings merge into one item
    assert {m.item_id for m in messages if m.good} == {f"{v}|{s}" for v, s in spellings}


def test_expected_totals_equal_a_recomputation_from_the_produced_events() -> None:
    workload, messages = generate()
    events = firsts(messages)
    inventory: dict[str, dict[str, Any]] = {}
    daily: dict[str, dict[str, Any]] = {}
    for event in events:
        item = f"{postgres_normalised(event['vendor'])}|{postgres_normalised(event['sku'])}"
        moment = datetime.fromisoformat(event["ts"]).astimezone(UTC)
        stock = inventory.setdefault(item, {"quantity": 0, "last_event_at": moment})
        stock["quantity"] += event["quantity"]
        stock["last_event_at"] = max(stock["last_event_at"], moment)
        row = daily.setdefault(f"{item}|{moment.date().isoformat()}", {"units": 0, "revenue": Decimal(0), "lines": 0})
        row["units"] += event["quantity"]
        row["revenue"] += event["quantity"] * event["unit_price"]
        row["lines"] += 1
    expected = orjson.loads(workload.totals.to_json())
    assert expected["good"] == expected["transactions"] == len(events)
    assert expected["items"] == len(inventory)
    assert expected["vendors"] == len({item.split("|")[0] for item in inventory})
    assert {
        k: (v["quantity"], datetime.fromisoformat(v["last_event_at"])) for k, v in expected["inventory"].items()
    } == {k: (v["quantity"], v["last_event_at"]) for k, v in inventory.items()}
    assert {k: (v["units"], Decimal(v["revenue"]), v["lines"]) for k, v in expected["item_sales_daily"].items()} == {
        k: (v["units"], v["revenue"], v["lines"]) for k, v in daily.items()
    }


def test_bad_messages_get_their_reasons_from_the_decoder_and_good_ones_decode() -> None:
    workload, messages = generate()
    reasons = dict(VENDOR_BAD_KINDS)
    kinds = Counter(m.kind for m in messages if not m.good)
    assert set(kinds) <= set(reasons) and len(kinds) >= 10
    counted: Counter[str] = Counter()
    for kind, n in kinds.items():
        counted[reasons[kind]] += n
    assert counted == workload.totals.bad_by_reason

    decoded = Decoder(load_pipeline("vendor-invoices")).decode(
        [Record("vendor-invoice-lines", 0, offset, m.key, m.value) for offset, m in enumerate(messages)]
    )
    assert sorted(decoded.row_records) == [n for n, m in enumerate(messages) if m.good]
    got = {
        (messages[n].kind, r.reason.value) for n, r in zip(decoded.rejected_records, decoded.rejections, strict=True)
    }
    assert got == {(kind, reasons[kind]) for kind in kinds}


def test_the_universe_is_fixed_by_its_size_listed_normalised_and_covers_every_key() -> None:
    workload, _ = generate()
    universe = workload.universe()
    assert len(universe) == len(set(universe)) == OPTIONS.items
    assert all(normalise(v) == v and normalise(s) == s for v, s in universe)
    assert len({v for v, _ in universe}) == OPTIONS.vendors
    assert len({s for _, s in universe}) < len(universe)  # a SKU recurs at several vendors: the pair is the key
    other = VendorInvoiceWorkload(replace(OPTIONS, seed=99, count=10))
    assert other.universe() == universe
    assert {tuple(key.split("|")) for key in workload.totals.inventory} <= set(universe)


def test_a_part_of_the_universe_can_be_left_new() -> None:
    # The benchmark's use: create 95% beforehand; the events then name some of the other 5% too.
    options = VendorWorkloadOptions(count=20_000, seed=1)
    workload, messages = generate(options)
    universe = workload.universe()
    assert len(universe) == 2000 and len({v for v, _ in universe}) == 8  # the documented defaults
    known = set(universe[: int(len(universe) * 0.95)])
    named = {tuple(m.item_id.split("|")) for m in messages if m.good and m.item_id}
    assert named - known and named & known


def test_produce_chooses_the_generator_by_the_pipeline_name() -> None:
    invoices = workload_options("invoices", count=500, seed=3, bad_ratio=0.1, duplicate_ratio=0.1)
    assert type(invoices) is WorkloadOptions and invoices.items == 1000
    plain = InvoiceWorkload(WorkloadOptions(count=500, seed=3, bad_ratio=0.1, duplicate_ratio=0.1))
    assert [m.value for m in new_workload(invoices).messages()] == [m.value for m in plain.messages()]

    vendor = workload_options("vendor-invoices", count=50, seed=3, items=40)
    assert isinstance(vendor, VendorWorkloadOptions) and (vendor.items, vendor.vendors) == (40, 8)
    assert isinstance(new_workload(vendor), VendorInvoiceWorkload)
    for name in ("pageviews", "my-pipeline"):
        with pytest.raises(NoGenerator) as refused:
            workload_options(name, count=10)
        assert str(refused.value).count("\n") == 0
        assert all(pipeline in str(refused.value) for pipeline in (name, *GENERATED_PIPELINES))


@pytest.fixture
def no_kafka(monkeypatch: pytest.MonkeyPatch) -> list[WorkloadOptions]:
    """`microbatch produce` with producing replaced: the options it would produce with are recorded."""
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "MICROBATCH_PIPELINE", "MICROBATCH_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    seen: list[WorkloadOptions] = []

    def produce(config: object, topic: str, options: WorkloadOptions, **kwargs: object) -> ProduceResult:
        seen.append(options)
        return ProduceResult(options.count, 0.1)

    monkeypatch.setattr("consumer.cli.produce_workload", produce)
    return seen


def test_the_cli_refuses_a_pipeline_without_generator_in_one_line(
    no_kafka: list[WorkloadOptions], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = tmp_path / "mine.toml"
    own.write_text((builtin_dir() / "pageviews.toml").read_text().replace('name = "pageviews"', 'name = "my-views"'))
    for pipeline, name in (("pageviews", "pageviews"), (str(own), "my-views")):
        assert main(["produce", "--pipeline", pipeline, "--count", "5"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"microbatch: error: pipeline '{name}' has no event generator"), err
        assert "invoices, vendor-invoices" in err
    assert no_kafka == []  # refused before anything was produced


def test_the_cli_produces_vendor_invoices_for_that_pipeline(
    no_kafka: list[WorkloadOptions], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["produce", "--pipeline", "vendor-invoices", "--count", "7", "--seed", "4"]) == 0
    assert main(["produce", "--count", "7", "--items", "30"]) == 0
    vendor, invoices = no_kafka
    assert isinstance(vendor, VendorWorkloadOptions) and (vendor.count, vendor.seed, vendor.items) == (7, 4, 2000)
    assert type(invoices) is WorkloadOptions and invoices.items == 30
    assert "to vendor-invoice-lines" in capsys.readouterr().out


@dataclass
class Delivered:
    """The parts of a delivery report the ledger reads."""

    at: tuple[str, int, int]

    def topic(self) -> str:
        return self.at[0]

    def partition(self) -> int:
        return self.at[1]

    def offset(self) -> int:
        return self.at[2]


def test_the_ledger_records_vendor_messages_as_the_oracle_reads_them(tmp_path: Path) -> None:
    _, messages = generate(VendorWorkloadOptions(count=300, seed=2, bad_ratio=0.2, duplicate_ratio=0.1))
    out = io.BytesIO()
    ledger = Ledger(out)
    for offset, message in enumerate(messages):
        ledger.record(Delivered(("vendor-invoice-lines", 1, offset)), message)  # type: ignore[arg-type]
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(out.getvalue())
    entries = read_ledger([path])
    assert len(entries) == len(messages)
    for entry, message in zip(entries, messages, strict=True):
        assert (entry["good"], entry["kind"], entry["event_id"]) == (message.good, message.kind, message.event_id)
        assert entry_bytes(entry, "value") == message.value and entry_bytes(entry, "key") == message.key
        assert entry_headers(entry) == list(message.headers)


def test_every_pipeline_with_a_generator_has_a_demo() -> None:
    assert set(DEMOS) == set(GENERATED_PIPELINES)
    assert all(load_pipeline(name).name == name for name in DEMOS)
