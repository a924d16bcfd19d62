"""Avro single-object encoding and the schemas in schemas/."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_reader

from tests import factories
from worker.adapters.avro import HEADER_SIZE, AvroCodec, schema_fingerprint
from worker.service.limits import MAX_MESSAGE_BYTES
from worker.service.messages import UndecodableMessage, UnknownSchema

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec.from_directory(ROOT / "schemas")


def test_fingerprint_matches_the_avro_specification_test_vector() -> None:
    # Avro's schema-tests: the CRC-64-AVRO fingerprint of "null" is 7195948357588979594.
    fp = schema_fingerprint("null")  # type: ignore[arg-type]
    assert int.from_bytes(fp, "little") == 7195948357588979594


def test_encoded_message_carries_the_single_object_header(codec: AvroCodec) -> None:
    value = codec.encode("backorder.InventoryReceived", factories.receipt("R-1", "SKU", 5))
    assert value[:2] == b"\xc3\x01"
    assert value[2:10] == codec.latest("backorder.InventoryReceived").fingerprint


@pytest.mark.parametrize(
    "record",
    [
        factories.order(
            "100",
            "2026-01-05",
            [("WIDGET", 20)],
            need_by=factories.at("2026-02-01").date(),
            split_preference="SHIP_COMPLETE",
            customer_tier="VIP",
        ),
        factories.receipt("R-1", "WIDGET", 50, supplier_id="acme", purchase_order_id="PO-1"),
    ],
)
def test_round_trip(codec: AvroCodec, record: dict[str, object]) -> None:
    name = "backorder.OrderCreated" if "lines" in record else "backorder.InventoryReceived"
    decoded_name, decoded = codec.decode(codec.encode(name, record))
    assert decoded_name == name
    assert decoded == record


@pytest.mark.parametrize(
    "value, error",
    [
        (None, UndecodableMessage),
        (b"", UndecodableMessage),
        (b'{"order_id": "1"}', UndecodableMessage),
        (b"\xc3\x01\x00\x00", UndecodableMessage),
        (b"\xc3\x01" + b"\xff" * 8 + b"\x02", UnknownSchema),
    ],
)
def test_refuses_what_is_not_a_known_single_object(
    codec: AvroCodec, value: bytes | None, error: type[Exception]
) -> None:
    with pytest.raises(error):
        codec.decode(value)


def test_refuses_a_truncated_body_and_trailing_bytes(codec: AvroCodec) -> None:
    value = codec.encode("backorder.InventoryReceived", factories.receipt("R-1", "SKU", 5))
    with pytest.raises(UndecodableMessage, match="does not match"):
        codec.decode(value[:-3])
    with pytest.raises(UndecodableMessage, match="bytes left"):
        codec.decode(value + b"\x00")


def test_an_older_writer_version_is_resolved_to_the_newest_reader(tmp_path: Path) -> None:
    v1 = json.loads((ROOT / "schemas" / "InventoryReceived.v1.avsc").read_text())
    v2 = {**v1, "fields": [*v1["fields"], {"name": "lot", "type": ["null", "string"], "default": None}]}
    (tmp_path / "InventoryReceived.v1.avsc").write_text(json.dumps(v1))
    (tmp_path / "InventoryReceived.v2.avsc").write_text(json.dumps(v2))
    old_writer = AvroCodec([_only(AvroCodec.from_directory(tmp_path), 1)])
    both = AvroCodec.from_directory(tmp_path)
    old_message = old_writer.encode("backorder.InventoryReceived", factories.receipt("R-1", "SKU", 5))
    _, record = both.decode(old_message)
    assert record["lot"] is None and record["quantity"] == 5


def _only(codec: AvroCodec, version: int):  # type: ignore[no-untyped-def]
    return next(v for v in codec._by_fingerprint.values() if v.version == version)


CONTRACT = ROOT.parent / "shared" / "EVENT_CONTRACT.md"


def _field_names(schema: object) -> list[str]:
    """Every field name in a schema, nested records included."""
    if isinstance(schema, list):
        return [name for branch in schema for name in _field_names(branch)]
    if not isinstance(schema, dict):
        return []
    names = []
    for field in schema.get("fields", []):
        names.append(field["name"])
        names += _field_names(field["type"])
    return names + _field_names(schema.get("items"))


@pytest.mark.skipif(not CONTRACT.exists(), reason="the shared event contract is not beside the repository")
def test_every_record_of_the_contract_has_a_schema_with_its_fields(codec: AvroCodec) -> None:
    text = CONTRACT.read_text()
    for record in re.findall(r"record `(\w+)`", text):
        schema = codec.latest(f"backorder.{record}")
        section = text.split(f"record `{record}`", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
        names = set(_field_names(json.loads(schema.path.read_text())))
        for field in set(re.findall(r"`(\w+)`(?: (?:string|int|long|boolean|null|enum|array|date))", section)):
            assert field in names, f"{record}.{field}"
        assert {"event_id", "occurred_at"} <= names


def _position(codec: AvroCodec, name: str, record: dict[str, Any], field: str, other: object) -> tuple[bytes, int]:
    """A message of `record`, and the offset of the first byte that changes when `field` is `other` instead."""
    value = codec.encode(name, record)
    changed = codec.encode(name, {**record, field: other})
    return value, next(i for i, (a, b) in enumerate(zip(value, changed, strict=False)) if a != b)


def _with_byte(value: bytes, at: int, replacement: bytes) -> bytes:
    return value[:at] + replacement + value[at + 1 :]


ORDER = factories.order("1", "2026-01-05", [("WIDGET", 2)])


@pytest.mark.parametrize(
    "field, other, index, fastavro_reads",
    [
        ("customer_tier", "VIP", b"\x01", "WHOLESALE"),  # zig-zag -1: the last symbol
        ("customer_tier", "VIP", b"\x03", "VIP"),  # -2
        ("shipping_service", "EXPEDITED", b"\x01", "EXPEDITED"),
        ("need_by", dt.date(2026, 2, 1), b"\x03", None),  # union index -2: the null branch
        ("split_preference", "SHIP_COMPLETE", b"\x03", None),
    ],
)
def test_a_negative_enum_or_union_index_is_refused(
    codec: AvroCodec, field: str, other: object, index: bytes, fastavro_reads: object
) -> None:
    value, at = _position(codec, "backorder.OrderCreated", ORDER, field, other)
    hostile = _with_byte(value, at, index)
    writer = codec.latest("backorder.OrderCreated").parsed
    read = schemaless_reader(io.BytesIO(hostile[HEADER_SIZE:]), writer, None)
    assert isinstance(read, dict) and read[field] == fastavro_reads  # what fastavro alone makes of it
    with pytest.raises(UndecodableMessage, match=r"canonical binary encoding of OrderCreated\.v1\.avsc"):
        codec.decode(hostile)


def test_a_boolean_other_than_0_or_1_and_an_over_long_number_are_refused(codec: AvroCodec) -> None:
    policy = factories.policy("SKU", backorders_allowed=False)
    value, at = _position(codec, "backorder.ProductPolicy", policy, "backorders_allowed", True)
    with pytest.raises(UndecodableMessage, match="canonical"):
        codec.decode(_with_byte(value, at, b"\x02"))
    receipt = factories.receipt("R-1", "SKU", 5)
    value, at = _position(codec, "backorder.InventoryReceived", receipt, "quantity", 6)
    assert value[at] == 10  # 5, zig-zag encoded
    with pytest.raises(UndecodableMessage, match="canonical"):
        codec.decode(_with_byte(value, at, b"\x8a\x00"))  # 5 in two bytes


def test_a_value_over_the_size_limit_is_refused_before_decoding(codec: AvroCodec) -> None:
    def order_of(size: int) -> bytes:
        # the product name's length prefix grows from 1 to 3 bytes along the way, so aim and then correct
        name_length = size - len(codec.encode("backorder.OrderCreated", ORDER))
        for _ in range(3):
            lines = [{**ORDER["lines"][0], "product_name": "p" * name_length}]
            value = codec.encode("backorder.OrderCreated", {**ORDER, "lines": lines})
            name_length += size - len(value)
        assert len(value) == size
        return value

    assert codec.decode(order_of(MAX_MESSAGE_BYTES))[0] == "backorder.OrderCreated"
    with pytest.raises(UndecodableMessage, match=r"the value is 262,145 bytes, over the limit of 262,144"):
        codec.decode(order_of(MAX_MESSAGE_BYTES + 1))
    with pytest.raises(UndecodableMessage, match="over the limit"):
        codec.decode(b"\x00" * 1_000_000)  # not even Avro: refused for its size alone
    small = AvroCodec(list(codec._by_fingerprint.values()), max_message_bytes=100)
    with pytest.raises(UndecodableMessage, match="over the limit of 100"):
        small.decode(order_of(101))
