"""Avro single-object encoding of the contract's records, with the schemas kept in `schemas/`.

Wire format (Avro specification, "Single-object encoding"): `C3 01`, the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form, then the Avro binary body.
A reader finds the writer schema by fingerprint among every version in `schemas/` and resolves it
to the newest version of the same record, its reader schema.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from worker.service.limits import MAX_MESSAGE_BYTES, quote
from worker.service.messages import UndecodableMessage, UnknownSchema

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
_FILE_NAME = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>\d+)\.avsc$")


@dataclass(frozen=True)
class SchemaVersion:
    full_name: str
    version: int
    fingerprint: bytes
    parsed: Any
    path: Path


def schema_fingerprint(schema: dict[str, Any]) -> bytes:
    """The 8 bytes that follow the magic: CRC-64-AVRO of the Parsing Canonical Form, little-endian."""
    # fastavro prints the CRC-64-AVRO digest as hex in little-endian byte order, as the spec writes it.
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def _load(path: Path) -> SchemaVersion:
    match = _FILE_NAME.match(path.name)
    if match is None:
        raise ValueError(f"schema file {path.name} is not named <Record>.v<N>.avsc")
    raw = json.loads(path.read_text())
    parsed: Any = parse_schema(raw, named_schemas={})
    full_name = parsed["name"]
    if full_name.rsplit(".", 1)[-1] != match["name"]:
        raise ValueError(f"{path.name} holds record {full_name}")
    return SchemaVersion(full_name, int(match["version"]), schema_fingerprint(raw), parsed, path)


def bundled_schema_dir() -> Path:
    return Path(str(resources.files("worker") / "schemas"))


class AvroCodec:
    """Decodes any known version of a record; encodes with the newest version."""

    def __init__(self, versions: list[SchemaVersion], max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._max_message_bytes = max_message_bytes
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        self._latest: dict[str, SchemaVersion] = {}
        for v in versions:
            if v.fingerprint in self._by_fingerprint:
                raise ValueError(f"{v.path.name} and {self._by_fingerprint[v.fingerprint].path.name} are one schema")
            self._by_fingerprint[v.fingerprint] = v
            if v.full_name not in self._latest or v.version > self._latest[v.full_name].version:
                self._latest[v.full_name] = v

    @classmethod
    def from_directory(cls, directory: Path | None = None) -> AvroCodec:
        directory = directory or bundled_schema_dir()
        versions = [_load(p) for p in sorted(directory.glob("*.avsc"))]
        if not versions:
            raise ValueError(f"no Avro schemas found in {directory}")
        return cls(versions)

    def latest(self, full_name: str) -> SchemaVersion:
        return self._latest[full_name]

    def encode(self, full_name: str, record: Mapping[str, Any]) -> bytes:
        schema = self._latest[full_name]
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(schema.fingerprint)
        schemaless_writer(out, schema.parsed, record)
        return out.getvalue()

    def decode(self, value: bytes | None) -> tuple[str, Mapping[str, Any]]:
        if value is None:
            raise UndecodableMessage("the message has no value")
        if len(value) > self._max_message_bytes:
            raise UndecodableMessage(
                f"the value is {len(value):,} bytes, over the limit of {self._max_message_bytes:,}"
            )
        if len(value) < HEADER_SIZE or value[:2] != MAGIC:
            raise UndecodableMessage(
                f"not Avro single-object encoding (expected C3 01 and a fingerprint; got {value[:HEADER_SIZE].hex()})"
            )
        writer = self._by_fingerprint.get(value[2:HEADER_SIZE])
        if writer is None:
            raise UnknownSchema(f"no schema in schemas/ has fingerprint {value[2:HEADER_SIZE].hex()}")
        body = value[HEADER_SIZE:]
        record = self._read(body, writer, None)
        # fastavro takes a negative enum or union index as counting from the end (a customer tier of -1 reads as
        # WHOLESALE). Writing the record again must give back the same bytes: that refuses negative indexes, and
        # with them booleans other than 0 and 1, over-long varints and arrays split into several blocks, none of
        # which a standard Avro writer produces.
        canonical = io.BytesIO()
        try:
            schemaless_writer(canonical, writer.parsed, record)
        except Exception as exc:  # what fastavro read, it can write; should that ever fail, the body is at fault
            raise UndecodableMessage(
                f"body of {writer.path.name} cannot be written back: {type(exc).__name__}"
            ) from exc
        if canonical.getvalue() != body:
            raise UndecodableMessage(
                f"body is not in the canonical binary encoding of {writer.path.name} (a negative enum or union"
                " index, a boolean other than 0 or 1, an over-long number or an array in several blocks)"
            )
        reader = self._latest[writer.full_name]
        if reader is not writer:
            record = self._read(body, writer, reader)
        return writer.full_name, record

    @staticmethod
    def _read(body: bytes, writer: SchemaVersion, reader: SchemaVersion | None) -> dict[str, Any]:
        stream = io.BytesIO(body)
        try:
            record = schemaless_reader(stream, writer.parsed, None if reader is None else reader.parsed)
        except Exception as exc:  # fastavro raises several types for a truncated or corrupt body
            raise UndecodableMessage(
                f"body does not match {writer.path.name}: {type(exc).__name__}: {quote(str(exc))}"
            ) from exc
        if stream.tell() != len(body):
            raise UndecodableMessage(f"{len(body) - stream.tell()} bytes left after the record")
        if not isinstance(record, dict):
            raise UndecodableMessage(f"{writer.full_name} did not decode to a record")
        return record


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def to_record(event: Any) -> dict[str, Any]:
    """A domain event dataclass as the dict fastavro writes (nested records as dicts, tuples as lists).

    Runs for every outbound event, so it does the least it can: field names are looked up once per
    class, and enums stay as they are (they are StrEnums, which fastavro writes as their symbols).
    """
    kind = type(event)
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(event))
    record = {}
    for name in names:
        value = getattr(event, name)
        if type(value) is tuple:
            value = [to_record(item) if dataclasses.is_dataclass(item) else item for item in value]
        elif isinstance(value, Enum) and not isinstance(value, str):
            value = value.value
        record[name] = value
    return record


class EventSerializer:
    """Turns an outbound domain event into (topic, key, value) for the outbox."""

    def __init__(self, codec: AvroCodec, topics: Mapping[type, str]) -> None:
        self._codec = codec
        self._topics = dict(topics)

    def __call__(self, event: Any) -> tuple[str, bytes, bytes]:
        kind = type(event)
        value = self._codec.encode(f"backorder.{kind.__name__}", to_record(event))
        return self._topics[kind], event.order_id.encode(), value
