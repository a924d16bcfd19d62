"""Avro single-object encoding and the schemas in schemas/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests import factories
from worker.adapters.avro import AvroCodec, schema_fingerprint
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
