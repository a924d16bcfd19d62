"""The Schema Registry, through confluent-kafka's own client: writer schemas by id for the reader, ids of the
worker's schemas under `<topic>-value` for the writer, and the `schemas register` of every version.

Any registry that serves the Confluent API will do (Confluent's, Apicurio's `/apis/ccompat/v7`, Karapace).
A registry that does not answer (down, refusing connections, timing out, answering 5xx, or refusing our
credentials) is the deployment's trouble, not a message's: it raises StoreUnavailable, so the consume loop
keeps the batch, pauses and retries with backoff, exactly as for an unavailable database. Only an id the
registry says it does not have (404) makes a message a dead letter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from worker.adapters.avro import AvroCodec, SchemaVersion, schema_versions
from worker.service.ports import StoreUnavailable
from worker.settings import Settings

COMPATIBILITY = "BACKWARD_TRANSITIVE"  # contract 1.1: every version reads the data of all earlier ones
NOT_FOUND = 404


def client_config(settings: Settings) -> dict[str, Any]:
    """The SchemaRegistryClient's configuration from the settings (None when no registry is configured)."""
    assert settings.schema_registry_url is not None
    config: dict[str, Any] = {
        "url": settings.schema_registry_url,
        "timeout": settings.schema_registry_timeout_seconds,
        # One retry of the client's own; beyond that the consume loop's backoff takes over.
        "max.retries": 1,
        "retries.wait.ms": 200,
        "retries.max.wait.ms": 1000,
    }
    if settings.schema_registry_basic_auth_user_info is not None:
        config["basic.auth.user.info"] = settings.schema_registry_basic_auth_user_info.get_secret_value()
    if settings.schema_registry_ca_location is not None:
        config["ssl.ca.location"] = settings.schema_registry_ca_location
    return config


def registry_client(settings: Settings) -> SchemaRegistryClient:
    return SchemaRegistryClient(client_config(settings))


class RegistrySchemas:
    """The codec's registry (see worker.adapters.avro.SchemaRegistry) on a SchemaRegistryClient, which also
    caches what it was told (ids by schema, schemas by id)."""

    def __init__(self, client: SchemaRegistryClient) -> None:
        self._client = client

    def writer_schema(self, schema_id: int) -> dict[str, Any] | None:
        try:
            schema = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == NOT_FOUND:
                return None
            raise StoreUnavailable(f"schema registry answered {exc.http_status_code}: {exc.error_message}") from exc
        except Exception as exc:  # httpx' transport errors and timeouts: the registry does not answer
            raise StoreUnavailable(f"schema registry unavailable: {type(exc).__name__}: {exc}") from exc
        if schema.schema_type not in (None, "AVRO") or schema.schema_str is None:
            return None
        try:
            raw = json.loads(schema.schema_str)
        except ValueError:
            return None
        return raw if isinstance(raw, dict) else {"type": raw}

    def schema_id(self, subject: str, schema: SchemaVersion) -> int:
        try:
            return int(self._client.register_schema(subject, Schema(schema.path.read_text(), "AVRO")))
        except Exception as exc:  # refused, or not answering: either way, not the message's fault
            raise StoreUnavailable(
                f"schema registry: cannot register {schema.path.name} under {subject}: {exc}"
            ) from exc


def avro_codec(settings: Settings, client: SchemaRegistryClient | None = None) -> AvroCodec:
    """The worker's codec: with the configured registry (Confluent framing out, both framings in), or without
    one (single-object encoding, as before contract 1.1)."""
    if settings.schema_registry_url is None:
        return AvroCodec.from_directory()
    return AvroCodec.from_directory(registry=RegistrySchemas(client or registry_client(settings)))


@dataclass(frozen=True)
class Registration:
    subject: str
    schema: str  # the file
    schema_id: int


class RegistrationRefused(Exception):
    """The registry refused a version (an incompatible change, usually); the message is the registry's."""


def topic_records(settings: Settings) -> dict[str, str]:
    """Every topic of the contract (inbound and outbound) -> the record it carries."""
    return {**settings.inbound_topics, **settings.outbound_topics}


def subjects(topics: Mapping[str, str]) -> dict[str, list[str]]:
    """Record full name -> the subjects `<topic>-value` of the topics that carry it."""
    out: dict[str, list[str]] = {}
    for topic, record in sorted(topics.items()):
        out.setdefault(record, []).append(f"{topic}-value")
    return out


def register_all(
    client: SchemaRegistryClient, topics: Mapping[str, str], versions: Iterable[SchemaVersion] | None = None
) -> list[Registration]:
    """Set each subject's compatibility to BACKWARD_TRANSITIVE and register every version of its record in order,
    oldest first. Registering a version again changes nothing (the registry answers with its id), so this is
    idempotent. Raises RegistrationRefused with the registry's message when a version is refused."""
    by_record = subjects(topics)
    done: list[Registration] = []
    all_versions = list(versions) if versions is not None else schema_versions()
    for record in sorted(by_record):
        ordered = sorted((v for v in all_versions if v.full_name == record), key=lambda v: v.version)
        for subject in by_record[record]:
            try:
                client.set_compatibility(subject_name=subject, level=COMPATIBILITY)
            except SchemaRegistryError as exc:
                raise RegistrationRefused(f"{subject}: compatibility not set: {exc.error_message}") from exc
            for version in ordered:
                try:
                    schema_id = client.register_schema(subject, Schema(version.path.read_text(), "AVRO"))
                except SchemaRegistryError as exc:
                    raise RegistrationRefused(
                        f"{subject}: {version.path.name} refused ({exc.http_status_code}): {exc.error_message}"
                    ) from exc
                done.append(Registration(subject, version.path.name, int(schema_id)))
    return done
