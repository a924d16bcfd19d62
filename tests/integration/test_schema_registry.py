"""Contract 1.1 against a real Schema Registry (Apicurio Registry's Confluent API, one for the session):
both framings on the topics, confluent-kafka's own serializer and deserializer on the other side, the 1.1
fields visible on the topics, a registry outage that dead-letters nothing, and schema evolution checked by
the registry under BACKWARD_TRANSITIVE.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import localstack
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import schemaless_writer

from tests import factories
from tests.integration.conftest import RECORD_OF, ROOT, Deployment, days_ago, json_lines, wait_for
from worker.adapters.avro import MAGIC, AvroCodec, bundled_schema_dir, schema_versions
from worker.adapters.schema_registry import RegistrationRefused, RegistrySchemas, register_all

RECORDS = {
    **RECORD_OF,
    "fulfillment-requested": "backorder.FulfillmentRequested",
    "customer-notification": "backorder.CustomerNotification",
    "backorder-status": "backorder.BackorderStatusChanged",
}


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localstack.SchemaRegistryServer]:
    """One Apicurio Registry for the session, started by the first test that asks for it."""
    server = localstack.SchemaRegistryServer(tmp_path_factory.mktemp("registry"))
    server.start()
    yield server
    server.stop()


class RegistryDeployment(Deployment):
    """A test's world whose worker and CLI use the registry; it reads the topics in either framing."""

    def __init__(self, stack: localstack.Endpoints, tmp_path: Path, registry_url: str) -> None:
        self.client = SchemaRegistryClient({"url": registry_url, "timeout": 5})
        super().__init__(stack, AvroCodec.from_directory(registry=RegistrySchemas(self.client)), tmp_path, 1)
        self.registry_url = registry_url

    def env(self, **overrides: str) -> dict[str, str]:
        registry = {
            "BACKORDER_SCHEMA_REGISTRY_URL": self.registry_url,
            "BACKORDER_SCHEMA_REGISTRY_TIMEOUT_SECONDS": "1",
        }
        return super().env(**{**registry, **overrides})

    def serializer(self, schema_file: str) -> AvroSerializer:
        """confluent-kafka's own serializer, as an OMS would use it (registering its schema if need be)."""
        serializer: AvroSerializer = AvroSerializer(self.client, (bundled_schema_dir() / schema_file).read_text())
        return serializer

    def produce_confluent(self, kind: str, schema_file: str, record: dict[str, Any]) -> bytes:
        value = self.serialize(kind, schema_file, record)
        key = record.get("order_id") or record.get("sku") or ""
        self.produce_raw(kind, str(key).encode(), value)
        return value

    def serialize(self, kind: str, schema_file: str, record: dict[str, Any]) -> bytes:
        value = self.serializer(schema_file)(record, SerializationContext(self.topics[kind], MessageField.VALUE))
        assert value is not None and value[:1] == b"\x00"
        return bytes(value)

    def close(self) -> None:
        super().close()
        self.client.close()

    def produce_v1(self, kind: str, record: dict[str, Any]) -> None:
        """Single-object encoding with version 1 of the record's schema, as a writer from before 1.1."""
        [v1] = [v for v in schema_versions() if v.full_name == RECORDS[kind] and v.version == 1]
        out = io.BytesIO(MAGIC + v1.fingerprint)
        out.seek(0, io.SEEK_END)
        schemaless_writer(out, v1.parsed, record)
        key = record.get("order_id") or record.get("sku") or ""
        self.produce_raw(kind, str(key).encode(), out.getvalue())


def v1_policy(sku: str, **fields: Any) -> dict[str, Any]:
    record = factories.policy(sku, **fields)
    del record["available_from"], record["max_promise_days"]
    return record


def test_both_framings_and_every_change_of_contract_1_1_on_the_topics(
    stack: localstack.Endpoints, registry: localstack.SchemaRegistryServer, tmp_path: Path
) -> None:
    world = RegistryDeployment(stack, tmp_path, registry.url)
    try:
        world.cli("schemas", "register")
        world.cli("schemas", "register")  # idempotent
        world.start_worker()

        # Policies: one in 1.1 through confluent-kafka's serializer, one from a version-1 writer, one plain.
        world.produce_confluent(
            "product-policy",
            "ProductPolicy.v2.avsc",
            factories.policy("LATE", lead_time_days=20, available_from=dt.date(2026, 12, 1), max_promise_days=60),
        )
        world.produce_v1("product-policy", v1_policy("SOON", lead_time_days=3))
        world.produce("product-policy", factories.policy("OLD", stale_after_days=30))
        world.produce_v1("inventory-received", factories.receipt("R-SC", "SC", 3))
        wait_for(
            "policies and stock",
            lambda: (
                world.query("SELECT (SELECT count(*) FROM product_policy), (SELECT count(*) FROM stock_receipt)")[0]
                == (3, 1)
            ),
        )
        # 1.1's policy fields are stored as sent (what they do comes with the promise); a v1 policy has none.
        assert world.query(
            "SELECT sku, available_from, max_promise_days FROM product_policy"
            " WHERE sku IN ('LATE', 'SOON') ORDER BY sku"
        ) == [("LATE", dt.date(2026, 12, 1), 60), ("SOON", None, None)]

        # Orders in both framings on one topic.
        world.produce_confluent(
            "order-created",
            "OrderCreated.v1.avsc",
            factories.order("held", days_ago(1), [("SC", 5)], split_preference="SHIP_COMPLETE"),
        )
        world.produce("order-created", factories.order("dated", days_ago(1), [("SOON", 1), ("LATE", 1)]))
        world.produce_confluent(
            "order-created", "OrderCreated.v1.avsc", factories.order("stale", days_ago(40), [("OLD", 1)])
        )
        wait_for("the orders", lambda: world.query("SELECT count(*) FROM customer_order")[0][0] == 3)

        # Cancellations that change nothing, from a version-1 writer and in 1.1.
        world.produce_v1("order-cancelled", factories.cancellation("ghost"))
        world.produce_confluent("order-cancelled", "OrderCancelled.v2.avsc", factories.cancellation("held", "L9"))
        # An id the registry never gave out.
        body = world.serialize(
            "order-created", "OrderCreated.v1.avsc", factories.order("nobody", days_ago(1), [("SC", 1)])
        )
        world.produce_raw("order-created", b"nobody", b"\x00" + (999_999).to_bytes(4, "big") + body[5:])
        world.cli("sweep")  # "stale" has waited 40 days, its product 30

        def statuses() -> dict[tuple[str, str], list[dict[str, Any]]]:
            out: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for m in world.read("backorder-status", settle_s=0.5):
                assert m.value is not None
                out.setdefault((m.value["order_id"], m.value["line_id"]), []).append(m.value)
            return out

        seen = wait_for("the answers and the stale cancellation", lambda: (s := statuses()) and len(s) >= 6 and s)
        held = seen[("held", "L1")][-1]
        assert (
            held["status"],
            held["quantity_allocated"],
            held["quantity_reserved"],
            held["quantity_backordered"],
        ) == (
            "PARTIALLY_ALLOCATED",
            0,
            3,
            2,
        )
        [ghost] = seen[("ghost", "")]
        assert (ghost["status"], ghost["sku"], ghost["cancel_reason"]) == ("CANCEL_PENDING", "", None)
        [unknown_line] = seen[("held", "L9")]
        assert unknown_line["status"] == "UNKNOWN_LINE"
        stale = seen[("stale", "L1")][-1]
        assert (stale["status"], stale["cancel_reason"]) == ("CANCELLED", "STALE")
        cancelled = [s for lines in seen.values() for s in lines if s["status"] == "CANCELLED"]
        assert [s["order_id"] for s in cancelled] == ["stale"]  # nothing that changed nothing says CANCELLED

        confirmed = {
            m.value["order_id"]: m.value
            for m in world.read("customer-notification", settle_s=0.5)
            if m.value and m.value["type"] == "BACKORDER_CONFIRMED"
        }
        dates = {line["sku"]: line["expected_ship_date"] for line in confirmed["dated"]["lines"]}
        assert dates["SOON"] is not None and dates["LATE"] is not None and dates["SOON"] < dates["LATE"]
        assert confirmed["dated"]["expected_ship_date"] == dates["LATE"]

        # Every outbound event is in the Confluent framing, and confluent-kafka's deserializer reads it.
        deserialize = AvroDeserializer(world.client)
        for kind in ("backorder-status", "customer-notification"):
            for m in world.read(kind, settle_s=0.3):
                assert m.raw is not None and m.raw[:1] == b"\x00"
                assert deserialize(m.raw, SerializationContext(m.topic, MessageField.VALUE)) == m.value

        [dead] = world.read("dlq", count=1)
        assert dead.headers["dlq.error.class"] == b"UnknownSchema"
        assert b"999999" in dead.headers["dlq.error.message"]
        assert world.query("SELECT count(*) FROM dead_letter")[0][0] == 1
    finally:
        world.close()


def test_a_registry_that_stops_answering_holds_the_batch_and_dead_letters_nothing(
    stack: localstack.Endpoints, registry: localstack.SchemaRegistryServer, tmp_path: Path
) -> None:
    world = RegistryDeployment(stack, tmp_path, registry.url)
    try:
        worker = world.start_worker()
        world.produce_confluent(
            "order-created", "OrderCreated.v1.avsc", factories.order("before", days_ago(1), [("X", 1)])
        )
        wait_for("the first order", lambda: world.read("backorder-status", settle_s=0.3))
        # Written while the registry answers, consumed while it does not: an id the worker has not seen yet.
        policy = world.serialize("product-policy", "ProductPolicy.v2.avsc", factories.policy("X", lead_time_days=5))

        registry.freeze()
        try:
            world.produce_raw("product-policy", b"X", policy)
            world.produce("order-created", factories.order("during", days_ago(1), [("X", 1)]))
            wait_for(
                "the worker to wait for the registry",
                lambda: any(
                    e.get("event") == "database_unavailable" and "schema registry" in e.get("error", "")
                    for e in json_lines(worker.log())
                ),
                timeout_s=30,
            )
            assert world.query("SELECT count(*) FROM product_policy")[0][0] == 0
        finally:
            registry.thaw()

        wait_for(
            "everything after the outage",
            lambda: (
                world.query("SELECT (SELECT count(*) FROM product_policy), (SELECT count(*) FROM customer_order)")[0]
                == (1, 2)
            ),
            timeout_s=60,
        )
        assert world.query("SELECT count(*) FROM dead_letter")[0][0] == 0
        assert worker.metric("backorder_database_retries_total") > 0
    finally:
        world.close()


def test_every_version_registers_in_order_and_an_incompatible_change_is_refused(
    registry: localstack.SchemaRegistryServer, tmp_path: Path
) -> None:
    with SchemaRegistryClient({"url": registry.url, "timeout": 5}) as client:
        check_evolution(client, registry, tmp_path)


def check_evolution(client: SchemaRegistryClient, registry: localstack.SchemaRegistryServer, tmp_path: Path) -> None:
    topics = {f"evolution.{topic}": record for topic, record in RECORDS.items()}
    first = register_all(client, topics)
    assert len(first) == len(schema_versions()) and {r.schema for r in first} >= {"ProductPolicy.v2.avsc"}
    assert [r.schema_id for r in register_all(client, topics)] == [r.schema_id for r in first]  # idempotent
    assert client.get_compatibility("evolution.product-policy-value") == "BACKWARD_TRANSITIVE"

    # Version 3 adds a field without a default: a new reader could not read the records already written.
    changed = tmp_path / "schemas"
    shutil.copytree(bundled_schema_dir(), changed)
    bad = json.loads((changed / "ProductPolicy.v2.avsc").read_text())
    bad["fields"].append({"name": "warehouse", "type": "string"})
    (changed / "ProductPolicy.v3.avsc").write_text(json.dumps(bad))
    with pytest.raises(RegistrationRefused, match=r"ProductPolicy\.v3\.avsc refused \(409\)"):
        register_all(client, topics, schema_versions(changed))

    # The command: a subject that already holds a schema our version 1 cannot read makes it fail, saying why.
    client.register_schema(
        "refusing.order-created-value",
        Schema(json.dumps({"type": "record", "name": "Legacy", "fields": [{"name": "x", "type": "string"}]}), "AVRO"),
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "BACKORDER_SCHEMA_REGISTRY_URL": registry.url,
        "BACKORDER_LOG_FORMAT": "json",
        **{f"BACKORDER_TOPIC_{kind.upper().replace('-', '_')}": f"refusing.{kind}" for kind in RECORDS},
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker", "schemas", "register"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "refused" in done.stderr and "refusing.order-created-value" in done.stderr
