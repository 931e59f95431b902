"""A dedupe key column that can be NULL never conflicts (ON CONFLICT treats NULLs as distinct), so a
replayed message would be written and counted again: the pipeline is refused when it is loaded."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest

from pipeline.spec_loader import PipelineFileError, builtin_dir, parse_pipeline
from pipeline.sqlplan import WritePlan


def invoices() -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(tomllib.loads((builtin_dir() / "invoices.toml").read_text()))
    return data


def refusal(data: dict[str, Any]) -> str:
    with pytest.raises(PipelineFileError) as caught:
        parse_pipeline(data, origin="p.toml")
    return str(caught.value)


def test_an_optional_field_in_the_dedupe_key_is_refused_naming_the_column() -> None:
    data = invoices()
    data["fields"]["event_id"]["required"] = False
    data["raw"]["columns"]["event"] = data["raw"]["columns"].pop("event_id")
    data["raw"]["dedupe_key"] = ["event"]
    message = refusal(data)
    assert "p.toml" in message
    assert "dedupe_key column 'event' may be null (it reads the optional field 'event_id')" in message
    assert "make it required or give it a default" in message


def test_one_nullable_column_in_a_composite_key_is_enough_to_refuse() -> None:
    data = invoices()
    data["fields"]["source"] = {"type": "string", "required": False}
    data["raw"]["columns"]["source"] = "source"
    data["raw"]["dedupe_key"] = ["event_id", "source"]
    assert "dedupe_key column 'source' may be null" in refusal(data)


def test_the_kafka_message_key_is_refused() -> None:
    data = invoices()
    data["raw"]["columns"]["message_key"] = {"kafka": "key"}
    data["raw"]["dedupe_key"] = ["kafka_topic", "message_key"]
    message = refusal(data)
    assert "dedupe_key column 'message_key' may be null (it reads the Kafka message key)" in message


def test_an_expression_over_an_optional_field_is_refused() -> None:
    data = invoices()
    data["fields"]["discount"] = {"type": "integer", "required": False}
    data["raw"]["columns"]["net"] = {"expr": "quantity - discount", "type": "bigint"}
    data["raw"]["dedupe_key"] = ["net"]
    assert "dedupe_key column 'net' may be null (it reads the expression over optional fields)" in refusal(data)


@pytest.mark.parametrize(
    "key",
    [
        ["event_id"],
        ["kafka_topic", "kafka_partition", "kafka_offset"],
        ["kafka_time", "item_id"],
        ["event_id", "channel"],  # optional, but with a default: never null
        ["line"],  # an expression over required fields
    ],
)
def test_keys_that_are_never_null_are_accepted(key: list[str]) -> None:
    data = invoices()
    data["fields"]["channel"] = {"type": "string", "required": False, "default": "web"}
    data["raw"]["columns"].update(
        channel="channel",
        kafka_time={"kafka": "timestamp"},
        line={"expr": "quantity * unit_price", "type": "numeric"},
    )
    data["raw"]["dedupe_key"] = key
    spec = parse_pipeline(data)
    shape = WritePlan(spec).raw_shape()
    assert shape.key == tuple(key)
    assert all(column.not_null for column in shape.columns if column.name in key)
