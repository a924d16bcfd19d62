"""The codec with a Schema Registry (a fake one here; the real one is in tests/integration): both framings in,
the Confluent framing out, ids asked for once, an unknown id refused, a registry that is down never refused."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from tests import factories
from worker.adapters.avro import AvroCodec, SchemaVersion, schema_versions
from worker.adapters.schema_registry import client_config, subjects
from worker.service.messages import UnknownSchema
from worker.service.ports import StoreUnavailable
from worker.settings import Settings, masked_user_info


class FakeRegistry:
    def __init__(self) -> None:
        self.schemas: dict[int, dict[str, Any]] = {}
        self.ids: dict[tuple[str, bytes], int] = {}
        self.asked: list[int] = []
        self.down = False

    def writer_schema(self, schema_id: int) -> dict[str, Any] | None:
        self.asked.append(schema_id)
        if self.down:
            raise StoreUnavailable("schema registry unavailable")
        return self.schemas.get(schema_id)

    def schema_id(self, subject: str, schema: SchemaVersion) -> int:
        if self.down:
            raise StoreUnavailable("schema registry unavailable")
        key = (subject, schema.fingerprint)
        if key not in self.ids:
            self.ids[key] = len(self.schemas) + 1
            self.schemas[self.ids[key]] = json.loads(schema.path.read_text())
        return self.ids[key]


def framed(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


ORDER = factories.order("O-1", "2026-01-05", [("SKU", 2)])


def test_outbound_is_framed_under_the_topic_subject_and_read_back_in_either_framing() -> None:
    registry = FakeRegistry()
    codec = AvroCodec.from_directory(registry=registry)
    value = codec.encode_for("orders", "backorder.OrderCreated", ORDER)
    assert value[:5] == framed(1, b"")
    assert list(registry.ids) == [("orders-value", codec.latest("backorder.OrderCreated").fingerprint)]
    assert codec.decode(value) == codec.decode(codec.encode("backorder.OrderCreated", ORDER))
    codec.decode(value)
    assert registry.asked == [1]  # an id is asked for once


def test_without_a_registry_the_single_object_encoding_is_written_and_the_confluent_framing_refused() -> None:
    codec = AvroCodec.from_directory()
    value = codec.encode_for("orders", "backorder.OrderCreated", ORDER)
    assert value[:2] == b"\xc3\x01"
    with pytest.raises(Exception, match="not Avro single-object encoding"):
        codec.decode(framed(1, value[10:]))


def test_an_unknown_id_or_a_record_the_worker_does_not_read_is_an_unknown_schema() -> None:
    registry = FakeRegistry()
    codec = AvroCodec.from_directory(registry=registry)
    body = codec.encode("backorder.OrderCreated", ORDER)[10:]
    with pytest.raises(UnknownSchema, match="no schema id 7"):
        codec.decode(framed(7, body))
    registry.schemas[8] = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "string"}]}
    with pytest.raises(UnknownSchema, match="not a record this worker reads"):
        codec.decode(framed(8, body))


def test_a_newer_writer_version_of_a_known_record_is_resolved_to_the_reader() -> None:
    registry = FakeRegistry()
    codec = AvroCodec.from_directory(registry=registry)
    [v2] = [v for v in schema_versions() if v.full_name == "backorder.ProductPolicy" and v.version == 2]
    newer = json.loads(v2.path.read_text())
    newer["fields"].append({"name": "warehouse", "type": "string", "default": "main"})
    registry.schemas[3] = newer
    out = BytesIO()
    schemaless_writer(out, parse_schema(newer, named_schemas={}), {**factories.policy("SKU"), "warehouse": "east"})
    name, record = codec.decode(framed(3, out.getvalue()))
    assert name == "backorder.ProductPolicy" and "warehouse" not in record and record["sku"] == "SKU"


def test_a_registry_that_is_down_is_unavailable_never_a_refusal() -> None:
    registry = FakeRegistry()
    codec = AvroCodec.from_directory(registry=registry)
    body = codec.encode("backorder.OrderCreated", ORDER)[10:]
    registry.down = True
    with pytest.raises(StoreUnavailable):
        codec.decode(framed(1, body))
    with pytest.raises(StoreUnavailable):
        codec.encode_for("orders", "backorder.OrderCreated", ORDER)


def test_subjects_follow_the_topic_name_strategy() -> None:
    assert subjects({"b": "backorder.X", "a": "backorder.X", "c": "backorder.Y"}) == {
        "backorder.X": ["a-value", "b-value"],
        "backorder.Y": ["c-value"],
    }


def test_the_client_gets_the_timeout_auth_and_ca_and_the_password_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKORDER_SCHEMA_REGISTRY_URL", "https://registry:8081")
    monkeypatch.setenv("BACKORDER_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "svc:s3cret")
    monkeypatch.setenv("BACKORDER_SCHEMA_REGISTRY_CA_LOCATION", "/etc/ssl/registry-ca.pem")
    monkeypatch.setenv("BACKORDER_SCHEMA_REGISTRY_TIMEOUT_SECONDS", "2.5")
    settings = Settings()
    config = client_config(settings)
    assert config["url"] == "https://registry:8081" and config["timeout"] == 2.5
    assert config["basic.auth.user.info"] == "svc:s3cret" and config["ssl.ca.location"] == "/etc/ssl/registry-ca.pem"
    assert "s3cret" not in repr(settings) and "s3cret" not in settings.model_dump_json()
    assert masked_user_info("svc:s3cret") == "svc:**********"
