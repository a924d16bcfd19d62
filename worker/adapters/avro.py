"""Avro encoding of the contract's records, with the schemas kept in `schemas/`, in either framing of contract 1.1.

- Single-object encoding (Avro specification), the default: `C3 01`, the 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema's Parsing Canonical Form, then the Avro binary body. A reader finds the
  writer schema by fingerprint among every version in `schemas/`.
- Confluent Schema Registry framing, when a registry is configured: byte `00`, the 4-byte big-endian schema
  id, then the body. A reader asks the registry for the writer schema of an id (once: kept by id).

Either way the writer schema is resolved to the newest version of the same record in `schemas/`, the
reader schema. The first byte tells the framings apart, so a topic may carry both.
"""

from __future__ import annotations

import dataclasses
import io
import json
import operator
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from worker.service.limits import MAX_MESSAGE_BYTES, quote
from worker.service.messages import UndecodableMessage, UnknownSchema

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
REGISTRY_MAGIC = b"\x00"  # Confluent framing: this byte, then the schema id in 4 bytes, big-endian
REGISTRY_HEADER_SIZE = len(REGISTRY_MAGIC) + 4
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


def schema_versions(directory: Path | None = None) -> list[SchemaVersion]:
    """Every schema version in `directory` (the bundled `schemas/` by default), by record, oldest first."""
    directory = directory or bundled_schema_dir()
    versions = [_load(p) for p in sorted(directory.glob("*.avsc"))]
    if not versions:
        raise ValueError(f"no Avro schemas found in {directory}")
    return sorted(versions, key=lambda v: (v.full_name, v.version))


class SchemaRegistry(Protocol):
    """What the codec needs of a Schema Registry. Both raise StoreUnavailable when the registry does not
    answer (a message must not be dead-lettered because the registry is down)."""

    def writer_schema(self, schema_id: int) -> dict[str, Any] | None:
        """The schema registered under `schema_id` as JSON; None if the registry has no such id."""
        ...

    def schema_id(self, subject: str, schema: SchemaVersion) -> int:
        """The id of `schema` under `subject`, registering it if it is not there yet."""
        ...


class AvroCodec:
    """Decodes any known version of a record, in either framing; encodes with the newest version, in the
    Confluent framing when it has a registry and in single-object encoding otherwise."""

    def __init__(
        self,
        versions: list[SchemaVersion],
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        registry: SchemaRegistry | None = None,
    ) -> None:
        self._max_message_bytes = max_message_bytes
        self._registry = registry
        self._by_id: dict[int, SchemaVersion] = {}  # writer schemas the registry named, kept for good
        self._ids: dict[tuple[str, str], int] = {}  # (subject, record) -> the id this worker writes with
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        self._latest: dict[str, SchemaVersion] = {}
        for v in versions:
            if v.fingerprint in self._by_fingerprint:
                raise ValueError(f"{v.path.name} and {self._by_fingerprint[v.fingerprint].path.name} are one schema")
            self._by_fingerprint[v.fingerprint] = v
            if v.full_name not in self._latest or v.version > self._latest[v.full_name].version:
                self._latest[v.full_name] = v

    @classmethod
    def from_directory(cls, directory: Path | None = None, registry: SchemaRegistry | None = None) -> AvroCodec:
        return cls(schema_versions(directory), registry=registry)

    def latest(self, full_name: str) -> SchemaVersion:
        return self._latest[full_name]

    def encode(self, full_name: str, record: Mapping[str, Any]) -> bytes:
        """Single-object encoding with the newest version of the record."""
        schema = self._latest[full_name]
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(schema.fingerprint)
        schemaless_writer(out, schema.parsed, record)
        return out.getvalue()

    def encode_for(self, topic: str, full_name: str, record: Mapping[str, Any]) -> bytes:
        """The record for `topic`: in the Confluent framing under the subject `<topic>-value` when there is a
        registry (the id is asked for once per subject), else in single-object encoding. Raises
        StoreUnavailable when the registry does not answer."""
        if self._registry is None:
            return self.encode(full_name, record)
        schema = self._latest[full_name]
        subject = f"{topic}-value"
        schema_id = self._ids.get((subject, full_name))
        if schema_id is None:
            schema_id = self._ids[(subject, full_name)] = self._registry.schema_id(subject, schema)
        out = io.BytesIO()
        out.write(REGISTRY_MAGIC)
        out.write(schema_id.to_bytes(4, "big"))
        schemaless_writer(out, schema.parsed, record)
        return out.getvalue()

    def decode(self, value: bytes | None) -> tuple[str, Mapping[str, Any]]:
        if value is None:
            raise UndecodableMessage("the message has no value")
        if len(value) > self._max_message_bytes:
            raise UndecodableMessage(
                f"the value is {len(value):,} bytes, over the limit of {self._max_message_bytes:,}"
            )
        if self._registry is not None and value[:1] == REGISTRY_MAGIC:
            if len(value) < REGISTRY_HEADER_SIZE:
                raise UndecodableMessage(f"a Confluent framing too short for its schema id: {value.hex()}")
            registered = self._registered(int.from_bytes(value[1:REGISTRY_HEADER_SIZE], "big"))
            return self._decode_body(value[REGISTRY_HEADER_SIZE:], registered)
        if len(value) < HEADER_SIZE or value[:2] != MAGIC:
            expected = "C3 01 and a fingerprint" + (", or 00 and a schema id" if self._registry is not None else "")
            raise UndecodableMessage(
                f"not Avro single-object encoding (expected {expected}; got {value[:HEADER_SIZE].hex()})"
            )
        writer = self._by_fingerprint.get(value[2:HEADER_SIZE])
        if writer is None:
            raise UnknownSchema(f"no schema in schemas/ has fingerprint {value[2:HEADER_SIZE].hex()}")
        return self._decode_body(value[HEADER_SIZE:], writer)

    def _registered(self, schema_id: int) -> SchemaVersion:
        """The writer schema of a registry id: one of ours when its fingerprint is, else a version of one of our
        records that this worker has no file of (a newer one), resolved like any other. Asked once per id."""
        known = self._by_id.get(schema_id)
        if known is not None:
            return known
        assert self._registry is not None
        raw = self._registry.writer_schema(schema_id)
        if raw is None:
            raise UnknownSchema(f"the schema registry has no schema id {schema_id}")
        try:
            fingerprint = schema_fingerprint(raw)
            ours = self._by_fingerprint.get(fingerprint)
            if ours is not None:
                writer = ours
            else:
                parsed: Any = parse_schema(raw, named_schemas={})
                if not isinstance(parsed, dict) or parsed.get("name") not in self._latest:
                    name = parsed.get("name") if isinstance(parsed, dict) else type(parsed).__name__
                    raise UnknownSchema(f"schema id {schema_id} is {quote(str(name))}, not a record this worker reads")
                writer = SchemaVersion(parsed["name"], 0, fingerprint, parsed, Path(f"registry schema id {schema_id}"))
        except UnknownSchema:
            raise
        except Exception as exc:  # fastavro refuses a schema it cannot parse with several types
            raise UnknownSchema(f"schema id {schema_id} is not an Avro schema: {type(exc).__name__}") from exc
        self._by_id[schema_id] = writer
        return writer

    def _decode_body(self, body: bytes, writer: SchemaVersion) -> tuple[str, Mapping[str, Any]]:
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


def to_record(event: Any) -> dict[str, Any]:
    """A domain event dataclass as the dict fastavro writes (nested records as dicts, tuples as lists, an enum that
    is not a str as its value; StrEnums stay as they are: fastavro writes them as their symbols).

    Runs for every outbound event, so what to do with each field is worked out once per class (`_recorder`):
    the fields are read at once and only the tuples and non-str enums are looked at again (1.1-3.0 us an event,
    1.9-4.1 when each field was read and tested in turn).
    """
    kind = type(event)
    make = _RECORDERS.get(kind)
    if make is None:
        make = _RECORDERS[kind] = _recorder(kind)
    return make(event)


_RECORDERS: dict[type, Callable[[Any], dict[str, Any]]] = {}


def _recorder(kind: type) -> Callable[[Any], dict[str, Any]]:
    """The fields are told apart by their annotations. A class compiled with mypyc (README, "Compiled rules") keeps
    them without their arguments: a tuple as `tuple`, whatever it holds, and a union as `type`. Such a tuple's
    items are each looked at (a record or not), and such a union's value (an enum that is not a str or not)."""
    hints = typing.get_type_hints(kind)
    names = tuple(f.name for f in dataclasses.fields(kind))
    values = operator.attrgetter(*names)
    converters: list[tuple[str, Callable[[Any], Any]]] = []  # the fields written otherwise than as they are held
    for name in names:
        hint = hints[name]
        if hint is tuple or typing.get_origin(hint) is tuple:
            items = typing.get_args(hint)[:1]  # () when not told
            if not items:
                converters.append((name, _records_or_values))
            else:
                converters.append((name, _records if dataclasses.is_dataclass(items[0]) else list))
        elif any(_plain_enum(t) for t in (hint, *typing.get_args(hint))):
            converters.append((name, _enum_value))
        elif hint is type:  # compiled: what the union holds is told by its value
            converters.append((name, _plain_enum_value))
    if not converters:
        return lambda event: dict(zip(names, values(event), strict=True))

    def make(event: Any) -> dict[str, Any]:
        record = dict(zip(names, values(event), strict=True))
        for name, convert in converters:
            record[name] = convert(record[name])
        return record

    return make


def _records(items: Iterable[Any]) -> list[dict[str, Any]]:
    return [to_record(item) for item in items]


def _records_or_values(items: Iterable[Any]) -> list[Any]:
    return [to_record(item) if dataclasses.is_dataclass(item) else item for item in items]


def _enum_value(value: Enum | None) -> Any:
    return None if value is None else value.value


def _plain_enum_value(value: Any) -> Any:
    return value.value if isinstance(value, Enum) and not isinstance(value, str) else value


def _plain_enum(hint: object) -> bool:
    return isinstance(hint, type) and issubclass(hint, Enum) and not issubclass(hint, str)


class EventSerializer:
    """Turns an outbound domain event into (topic, key, value) for the outbox."""

    def __init__(self, codec: AvroCodec, topics: Mapping[type, str]) -> None:
        self._codec = codec
        self._topics = dict(topics)

    def __call__(self, event: Any) -> tuple[str, bytes, bytes]:
        kind = type(event)
        topic = self._topics[kind]
        value = self._codec.encode_for(topic, f"backorder.{kind.__name__}", to_record(event))
        return topic, event.order_id.encode(), value
