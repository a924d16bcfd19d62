"""The business documents' example, end to end through Kafka and PostgreSQL, and its replay."""

from __future__ import annotations

from typing import Any

from tests import factories
from tests.integration.conftest import Deployment, Received, wait_for

SKU = "WIDGET-PRO-BLUE"


def by_order(messages: list[Received]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for m in messages:
        assert m.value is not None
        out.setdefault(m.value["order_id"], []).append(m.value)
    return out


def fulfilled(messages: list[Received]) -> dict[str, list[tuple[int, bool]]]:
    """order_id -> [(units of SKU in the shipment, partial)] in the order shipments were requested."""
    out: dict[str, list[tuple[int, bool]]] = {}
    for m in messages:
        assert m.value is not None
        units = sum(line["quantity"] for line in m.value["lines"] if line["sku"] == SKU)
        out.setdefault(m.value["order_id"], []).append((units, m.value["partial"]))
    return out


def play_story(deployment: Deployment) -> list[bytes]:
    """Orders 100, 101, 102 wait for an SKU with no stock; 50 units arrive, then 10 more."""
    sent = []
    for order_id, day in [("100", "2026-01-05T09:00"), ("101", "2026-01-06T09:00"), ("102", "2026-01-08T09:00")]:
        sent.append(deployment.produce("order-created", factories.order(order_id, day, [(SKU, 20)])))
    confirmed = deployment.read("customer-notification", count=3)
    assert sorted(m.value["type"] for m in confirmed if m.value) == ["BACKORDER_CONFIRMED"] * 3

    sent.append(deployment.produce("inventory-received", factories.receipt("R-1", SKU, 50, "2026-01-20")))
    deployment.read("fulfillment-requested", count=3)
    sent.append(deployment.produce("inventory-received", factories.receipt("R-2", SKU, 10, "2026-01-25")))
    deployment.read("fulfillment-requested", count=4)
    return sent


def test_receipts_fill_the_oldest_backorders_first_and_ship_what_is_available(deployment: Deployment) -> None:
    deployment.start_worker()
    play_story(deployment)

    notifications = by_order(deployment.read("customer-notification", count=7))
    for order_id in ("100", "101", "102"):
        confirmed = notifications[order_id][0]
        assert confirmed["type"] == "BACKORDER_CONFIRMED"
        assert confirmed["cancel_allowed"] is True
        assert [(line["sku"], line["quantity"], line["status"]) for line in confirmed["lines"]] == [
            (SKU, 20, "BACKORDERED")
        ]
    assert [n["type"] for n in notifications["102"]] == [
        "BACKORDER_CONFIRMED",
        "BACKORDER_ALLOCATED",
        "BACKORDER_ALLOCATED",
    ]

    # 50 units: 100 and 101 complete, 102 gets the 10 left and waits for 10 more; then 10 complete it.
    assert fulfilled(deployment.read("fulfillment-requested", count=4)) == {
        "100": [(20, False)],
        "101": [(20, False)],
        "102": [(10, True), (10, False)],
    }

    statuses = by_order(deployment.read("backorder-status", count=7))
    assert [(s["status"], s["quantity_allocated"], s["quantity_backordered"]) for s in statuses["102"]] == [
        ("BACKORDERED", 0, 20),
        ("PARTIALLY_ALLOCATED", 10, 10),
        ("ALLOCATED", 20, 0),
    ]
    assert [s["status"] for s in statuses["100"]] == ["BACKORDERED", "ALLOCATED"]

    fulfillment = deployment.read("fulfillment-requested", count=4)[0].value
    assert fulfillment is not None
    assert fulfillment["caused_by_event_id"]
    assert fulfillment["capture_payment"] is False  # the shop's default: payment taken at order

    assert deployment.stock(SKU) == (0, 60, 60, 0)


SNAPSHOT_TABLES = {
    "stock_level": "SELECT sku, available, received_total, updated_at FROM stock_level",
    "inbound_fact": "SELECT kind, natural_key, event_id, content_hash, recorded_at FROM inbound_fact",
    "customer_order": "SELECT order_id, event_id, recorded_at FROM customer_order",
    "order_line": "SELECT order_id, line_id, quantity_allocated, status, updated_at FROM order_line",
    "stock_receipt": "SELECT receipt_id, event_id, recorded_at FROM stock_receipt",
    "allocation": "SELECT allocation_id, order_id, line_id, quantity, shipment_id, cause FROM allocation",
    "outbox": "SELECT event_id, topic, message_value FROM outbox",
    "dead_letter": "SELECT source_topic, source_partition, source_offset FROM dead_letter",
}


def snapshot(deployment: Deployment) -> dict[str, list[tuple[Any, ...]]]:
    return {name: sorted(deployment.query(sql), key=repr) for name, sql in SNAPSHOT_TABLES.items()}


def output_ids(deployment: Deployment) -> dict[str, list[str]]:
    kinds = ("fulfillment-requested", "customer-notification", "backorder-status")
    return {kind: sorted(m.value["event_id"] for m in deployment.read(kind) if m.value) for kind in kinds}


def test_replaying_every_input_changes_nothing(deployment: Deployment) -> None:
    worker = deployment.start_worker()
    sent = play_story(deployment)
    wait_for(
        "the outbox to drain",
        lambda: worker.metric("backorder_outbox_backlog") == 0 and worker.metric("backorder_state_query_ok") == 1,
    )
    ids_before = output_ids(deployment)
    assert sum(len(ids) for ids in ids_before.values()) == 4 + 7 + 7
    before = snapshot(deployment)

    # The very same bytes again, then the same facts re-sent by the OMS under new event ids.
    for value in sent:
        kind = "order-created" if value in sent[:3] else "inventory-received"
        decoded = dict(deployment.codec.decode(value)[1])
        deployment.produce_raw(kind, (decoded.get("order_id") or decoded["sku"]).encode(), value)
    for value in sent:
        kind = "order-created" if value in sent[:3] else "inventory-received"
        record = {**deployment.codec.decode(value)[1], "event_id": f"resent-{len(value)}-{value[-8:].hex()}"}
        deployment.produce(kind, record)

    wait_for(
        "10 duplicates to be recognised",
        lambda: worker.metric("backorder_events_consumed_total", outcome="duplicate") == 10,
    )
    assert worker.metric("backorder_events_consumed_total", outcome="processed") == 5
    assert worker.metric("backorder_events_consumed_total", outcome="dead_lettered") == 0
    assert output_ids(deployment) == ids_before
    assert snapshot(deployment) == before
