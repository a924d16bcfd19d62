"""Bad input goes to the dead-letter topic with the contract's headers; the good input around it is handled."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
import uuid

from confluent_kafka import Consumer

from tests import factories
from tests.integration.conftest import DLQ_HEADERS, Deployment, wait_for

SKU = "DLQ-SKU"


def test_bad_messages_are_dead_lettered_and_processing_goes_on(deployment: Deployment) -> None:
    worker = deployment.start_worker()
    garbage = b"\x00this is not avro"
    zero = deployment.codec.encode("backorder.OrderCreated", factories.order("O-ZERO", "2026-01-02", [(SKU, 0)]))
    unknown_fingerprint = b"\xc3\x01" + b"\x01" * 8 + b"\x00"
    no_lines = factories.order("O-EMPTY", "2026-01-02", [])
    receipt_on_order_topic = deployment.codec.encode(
        "backorder.InventoryReceived", factories.receipt("R-WRONG", SKU, 5)
    )

    deployment.produce("order-created", factories.order("O-1", "2026-01-01", [(SKU, 2)]), key="same-partition")
    deployment.produce_raw("order-created", b"same-partition", garbage, headers=[("trace-id", b"abc-123")])
    deployment.produce_raw("order-created", b"same-partition", zero)
    deployment.produce_raw("order-created", b"same-partition", unknown_fingerprint)
    deployment.produce("order-created", no_lines, key="same-partition")
    deployment.produce_raw("order-created", b"same-partition", receipt_on_order_topic)
    deployment.produce("inventory-received", factories.receipt("R-BAD", SKU, -3))
    deployment.produce("order-created", factories.order("O-2", "2026-01-03", [(SKU, 1)]), key="same-partition")
    deployment.produce("inventory-received", factories.receipt("R-1", SKU, 3))

    dead = deployment.read("dlq", count=6)
    by_class = {m.headers["dlq.error.class"].decode(): m for m in dead}
    assert sorted(by_class) == ["InvalidEvent", "UndecodableMessage", "UnexpectedRecord", "UnknownSchema"]
    assert sorted(m.headers["dlq.error.class"].decode() for m in dead).count("InvalidEvent") == 3

    undecodable = by_class["UndecodableMessage"]
    assert undecodable.raw == garbage and undecodable.key == b"same-partition"
    assert undecodable.headers["trace-id"] == b"abc-123"  # the original headers travel along
    for header in DLQ_HEADERS:
        assert header in undecodable.headers, header
    assert undecodable.headers["dlq.original.topic"].decode() == deployment.topics["order-created"]
    assert int(undecodable.headers["dlq.original.offset"]) == 1
    dt.datetime.fromisoformat(undecodable.headers["dlq.failed_at"].decode())

    messages = {m.headers["dlq.error.message"].decode() for m in dead}
    assert any("quantity must be from 1 to 1,000,000, got 0" in text for text in messages)
    assert any("order has no lines" in text for text in messages)
    assert any(m.raw == zero for m in dead)

    # The valid events around the bad ones were handled: both orders filled from the receipt of 3.
    shipped = {
        m.value["order_id"]: m.value["lines"][0]["quantity"]
        for m in deployment.read("fulfillment-requested", count=2)
        if m.value
    }
    assert shipped == {"O-1": 2, "O-2": 1}
    wait_for("the dead-letter metric", lambda: worker.metric("backorder_dead_letters_total") == 6)
    assert worker.proc.poll() is None


def test_same_key_with_different_content_is_a_conflict(deployment: Deployment) -> None:
    deployment.start_worker()
    deployment.produce("order-created", factories.order("O-9", "2026-01-01", [(SKU, 2)]))
    deployment.read("customer-notification", count=1)
    deployment.produce("order-created", factories.order("O-9", "2026-01-01", [(SKU, 5)]))
    deployment.produce("inventory-received", factories.receipt("R-9", SKU, 4))
    deployment.produce("inventory-received", factories.receipt("R-9", SKU, 40))

    dead = deployment.read("dlq", count=2)
    assert [m.headers["dlq.error.class"] for m in dead] == [b"ConflictingDuplicate"] * 2
    [(quantity,)] = deployment.query("SELECT quantity FROM order_line WHERE order_id = 'O-9'")
    [(received,)] = deployment.query("SELECT received_total FROM stock_level WHERE sku = %s", SKU)
    assert (quantity, received) == (2, 4)


def test_an_event_the_database_cannot_apply_is_dead_lettered_alone(deployment: Deployment) -> None:
    deployment.start_worker()
    # Receipts within the input limits, two of which overflow the stock ledger's count of units received (eight
    # bytes) on this stock.
    near_max = 2**63 - 1 - 1_500_000
    deployment.query("INSERT INTO stock_level (sku, received_total) VALUES ('BIG', %s) RETURNING sku", near_max)
    huge = 1_000_000
    deployment.produce("inventory-received", factories.receipt("R-A", "BIG", huge))
    deployment.produce("inventory-received", factories.receipt("R-B", "BIG", huge))
    deployment.produce("inventory-received", factories.receipt("R-C", "BIG", 5))

    [dead] = deployment.read("dlq", count=1)
    assert dead.headers["dlq.error.class"] == b"UnprocessableEvent"
    assert b"out of range" in dead.headers["dlq.error.message"]
    wait_for("the receipt after it", lambda: deployment.query("SELECT count(*) FROM stock_receipt")[0][0] == 2)
    assert deployment.query("SELECT receipt_id FROM stock_receipt ORDER BY 1") == [("R-A",), ("R-C",)]
    assert deployment.query("SELECT available, received_total FROM stock_level WHERE sku = 'BIG'") == [
        (huge + 5, near_max + huge + 5)
    ]


def _raw_dead_letters(
    deployment: Deployment, count: int
) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """Key, value and every header in order (a name may come twice), as a reader of the topic sees them."""
    consumer = Consumer(
        {
            "bootstrap.servers": deployment.bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([deployment.topics["dlq"]])
    out: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            headers = [
                (str(name), value.encode() if isinstance(value, str) else bytes(value or b""))
                for name, value in list(msg.headers() or [])
            ]
            out.append((msg.key(), msg.value(), headers))
    finally:
        consumer.close()
    assert len(out) >= count, f"expected {count} dead letters, got {len(out)}"
    return out


def test_a_dead_letter_has_one_value_per_dlq_header_and_fits_in_kafka(deployment: Deployment) -> None:
    deployment.start_worker()
    forged = [("dlq.error.class", b"forged"), ("dlq.original.offset", b"999"), ("trace-id", b"t-7")]
    huge = b"\x00" + b"x" * 949_999  # not Avro, and too large to send back with the worker's headers
    deployment.produce_raw("order-created", b"k", b"\x00small garbage", headers=forged)
    deployment.produce_raw("order-created", b"k", huge, headers=forged)
    deployment.produce("order-created", factories.order("O-AFTER", "2026-01-01", [(SKU, 1)]), key="k")

    small, large = _raw_dead_letters(deployment, 2)
    for key, _, headers in (small, large):
        names = [name for name, _ in headers]
        for name in DLQ_HEADERS:
            assert names.count(name) == 1, (name, names)
        assert dict(headers)["dlq.error.class"] != b"forged"
        assert dict(headers)["original.dlq.error.class"] == b"forged"
        assert dict(headers)["trace-id"] == b"t-7"
        assert key == b"k"
    assert small[1] == b"\x00small garbage"
    assert large[1] is None
    assert dict(large[2])["dlq.value.omitted.bytes"] == b"950000"
    assert dict(large[2])["dlq.value.sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert [m.value["order_id"] for m in deployment.read("backorder-status", count=1) if m.value] == ["O-AFTER"]
    assert deployment.query("SELECT count(*) FROM outbox WHERE failed_at IS NOT NULL") == [(0,)]
