"""The priority, split-shipment, policy and cancellation stories, end to end through Kafka and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests import factories
from tests.integration.conftest import Deployment, days_ago, wait_for


def shipments(deployment: Deployment, count: int) -> list[tuple[str, str, int]]:
    """(order_id, sku, units) of every fulfillment line, in no particular order across orders."""
    out = []
    for m in deployment.read("fulfillment-requested", count=count):
        assert m.value is not None
        out += [(m.value["order_id"], line["sku"], line["quantity"]) for line in m.value["lines"]]
    return out


def wait_confirmed(deployment: Deployment, count: int) -> None:
    deployment.read("customer-notification", count=count)


def test_priority_orders_are_filled_before_older_standard_ones(deployment: Deployment) -> None:
    deployment.start_worker()
    stories: list[tuple[str, dict[str, Any]]] = [
        ("VIP", {"customer_tier": "VIP"}),
        ("EXP", {"shipping_service": "EXPEDITED"}),
        ("NEED", {"need_by": (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).date()}),
    ]
    for sku, fields in stories:
        deployment.produce("order-created", factories.order(f"{sku}-std-1", days_ago(3), [(sku, 2)]))
        deployment.produce("order-created", factories.order(f"{sku}-std-2", days_ago(2), [(sku, 2)]))
        deployment.produce("order-created", factories.order(f"{sku}-priority", days_ago(1), [(sku, 2)], **fields))
    # need-by against both expedited and VIP, all placed after it would have been under FIFO
    deployment.produce("order-created", factories.order("ALL-vip", days_ago(3), [("ALL", 1)], customer_tier="VIP"))
    deployment.produce(
        "order-created", factories.order("ALL-exp", days_ago(2), [("ALL", 1)], shipping_service="EXPEDITED")
    )
    deployment.produce(
        "order-created",
        factories.order(
            "ALL-need", days_ago(1), [("ALL", 1)], need_by=(dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date()
        ),
    )
    # a standard order past the starvation age (14 days by default) against a new VIP
    deployment.produce("order-created", factories.order("OLD-std", days_ago(20), [("OLD", 1)]))
    deployment.produce("order-created", factories.order("OLD-vip", days_ago(0.1), [("OLD", 1)], customer_tier="VIP"))
    wait_confirmed(deployment, 14)

    for sku, units in [("VIP", 2), ("EXP", 2), ("NEED", 2), ("ALL", 1), ("OLD", 1)]:
        deployment.produce("inventory-received", factories.receipt(f"R-{sku}", sku, units))
    assert sorted(shipments(deployment, 5)) == sorted(
        [
            ("VIP-priority", "VIP", 2),
            ("EXP-priority", "EXP", 2),
            ("NEED-priority", "NEED", 2),
            ("ALL-need", "ALL", 1),
            ("OLD-std", "OLD", 1),
        ]
    )
    reasons = dict(deployment.query("SELECT order_id, reason FROM allocation"))
    assert reasons["VIP-priority"].startswith("rank 3: VIP customer; waited 1 day")
    assert reasons["ALL-need"].startswith("rank 1: need_by")
    assert reasons["OLD-std"].startswith("rank 0: promoted after 14 days; waited 20 days")
    statuses = {
        m.value["order_id"]: m.value
        for m in deployment.read("backorder-status")
        if m.value and m.value["status"] == "ALLOCATED"
    }
    assert statuses["EXP-priority"]["reason"].startswith("rank 2 expedited; waited")

    decisions = deployment.cli("decisions", "--order", "OLD-std")
    assert "rank 0: promoted after 14 days" in decisions and "inventory-received/R-OLD" in decisions


def test_ship_complete_waits_while_ship_available_now_ships_in_parts(deployment: Deployment) -> None:
    deployment.start_worker()
    deployment.produce("inventory-received", factories.receipt("R-A1", "A", 3))
    deployment.produce("inventory-received", factories.receipt("R-B1", "B", 3))
    wait_for("the stock", lambda: deployment.query("SELECT count(*) FROM stock_receipt")[0][0] == 2)
    deployment.produce(
        "order-created", factories.order("complete", days_ago(1), [("A", 5)], split_preference="SHIP_COMPLETE")
    )
    deployment.produce(
        "order-created", factories.order("now", days_ago(1), [("B", 5)], split_preference="SHIP_AVAILABLE_NOW")
    )
    assert shipments(deployment, 1) == [("now", "B", 3)]
    wait_confirmed(deployment, 2)
    assert deployment.stock("A") == (0, 3, 0, 3)  # three units held for the ship-complete order

    deployment.produce("inventory-received", factories.receipt("R-A2", "A", 2))
    deployment.produce("inventory-received", factories.receipt("R-B2", "B", 2))
    assert sorted(shipments(deployment, 3)) == [("complete", "A", 5), ("now", "B", 2), ("now", "B", 3)]


def test_policy_rejects_what_may_not_wait(deployment: Deployment) -> None:
    deployment.start_worker()
    deployment.produce("product-policy", factories.policy("GONE", discontinued=True))
    deployment.produce("product-policy", factories.policy("CAPPED", max_backorder_qty_per_customer=5))
    deployment.produce("inventory-received", factories.receipt("R-GONE", "GONE", 2))
    wait_for(
        "policies and stock",
        lambda: (
            deployment.query("SELECT (SELECT count(*) FROM product_policy), (SELECT count(*) FROM stock_receipt)")[0]
            == (2, 1)
        ),
    )

    deployment.produce("order-created", factories.order("gone", days_ago(1), [("GONE", 5)]))
    deployment.produce("order-created", factories.order("cap-1", days_ago(2), [("CAPPED", 3)], customer_id="C"))
    wait_confirmed(deployment, 2)  # the rejection of "gone" and the confirmation of cap-1
    deployment.produce("order-created", factories.order("cap-2", days_ago(1), [("CAPPED", 4)], customer_id="C"))

    notices = {
        (m.value["order_id"], m.value["type"]): m.value
        for m in deployment.read("customer-notification", count=4)
        if m.value
    }
    gone = notices[("gone", "BACKORDER_REJECTED")]
    assert [(ln["quantity"], ln["status"]) for ln in gone["lines"]] == [(3, "REJECTED")]
    assert gone["reason"] == "discontinued"
    assert shipments(deployment, 1) == [("gone", "GONE", 2)]  # what was in stock still ships
    capped = notices[("cap-2", "BACKORDER_REJECTED")]
    assert [ln["quantity"] for ln in capped["lines"]] == [2]
    assert "over the limit of 5 backordered per customer (3 already waiting)" in capped["reason"]
    statuses = {m.value["order_id"]: m.value for m in deployment.read("backorder-status") if m.value}
    assert (statuses["gone"]["status"], statuses["gone"]["quantity_allocated"]) == ("REJECTED", 2)
    assert "3 of 5 rejected: discontinued" in statuses["gone"]["reason"]


def test_a_cancellation_releases_reserved_units_to_the_next_line_at_once(deployment: Deployment) -> None:
    deployment.start_worker()
    deployment.produce("inventory-received", factories.receipt("R-1", "HELD", 3))
    wait_for("the stock", lambda: deployment.query("SELECT count(*) FROM stock_receipt")[0][0] == 1)
    deployment.produce(
        "order-created", factories.order("holder", days_ago(2), [("HELD", 5)], split_preference="SHIP_COMPLETE")
    )
    wait_confirmed(deployment, 1)  # the holder has reserved all 3 units before the next order arrives
    deployment.produce("order-created", factories.order("next", days_ago(1), [("HELD", 3)]))
    wait_confirmed(deployment, 2)
    cancel = factories.cancellation("holder", reason="PAYMENT_FAILED")
    deployment.produce("order-cancelled", cancel)
    deployment.produce("order-cancelled", factories.cancellation("no-such-order"))

    [shipment] = deployment.read("fulfillment-requested", count=1)
    assert shipment.value is not None
    assert (shipment.value["order_id"], shipment.value["lines"][0]["quantity"]) == ("next", 3)
    assert shipment.value["caused_by_event_id"] == cancel["event_id"]  # in the cancellation's own transaction
    statuses = [m.value for m in deployment.read("backorder-status", count=5) if m.value]
    [cancelled] = [s for s in statuses if s["order_id"] == "holder" and s["status"] == "CANCELLED"]
    assert cancelled["reason"] == "PAYMENT_FAILED; refund due"
    assert (cancelled["cancel_reason"], cancelled["quantity_reserved"]) == ("PAYMENT_FAILED", 0)
    [unknown] = [s for s in statuses if s["order_id"] == "no-such-order"]
    assert unknown["status"] == "CANCEL_PENDING" and "order not known yet" in unknown["reason"]
    wait_for(
        "the metric",
        lambda: deployment.workers[0].metric("backorder_cancelled_lines_total", reason="PAYMENT_FAILED") == 1,
    )


def test_simulate_prints_the_decisions_a_real_receipt_then_makes(deployment: Deployment) -> None:
    deployment.start_worker()
    deployment.produce("order-created", factories.order("s-1", days_ago(5), [("SIM", 4)]))
    deployment.produce(
        "order-created", factories.order("s-2", days_ago(4), [("SIM", 3)], split_preference="SHIP_COMPLETE")
    )
    deployment.produce("order-created", factories.order("v-1", days_ago(1), [("SIM", 2)], customer_tier="VIP"))
    deployment.produce("order-created", factories.order("s-3", days_ago(3), [("SIM", 5)]))
    wait_confirmed(deployment, 4)

    queue = deployment.cli("queue", "--sku", "SIM")
    assert [line.split()[1] for line in queue.splitlines()[1:5]] == ["v-1", "s-1", "s-2", "s-3"]
    assert "4 lines waiting for SIM: 14 units" in queue

    printed = deployment.cli("simulate", "--sku", "SIM", "--receive", "8")
    assert "nothing was changed" in printed
    simulated = [tuple(line.split()[2:7]) for line in printed.splitlines()[1:] if line.startswith("20")]
    assert deployment.query("SELECT count(*) FROM allocation") == [(0,)]

    deployment.produce("inventory-received", factories.receipt("R-SIM", "SIM", 8))
    wait_for("the receipt", lambda: deployment.query("SELECT count(*) FROM allocation")[0][0] > 0)
    real = [
        (o, ln, sku, str(q), str(s))
        for o, ln, sku, q, s in deployment.query(
            "SELECT order_id, line_id, sku, quantity, shipped FROM allocation ORDER BY allocation_id"
        )
    ]
    assert simulated == real
    assert [r[0] for r in real] == ["v-1", "s-1", "s-2"]  # s-2 ships complete: it holds the last 2 of 3
