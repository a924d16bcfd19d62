"""When not to take a backorder, and pre-orders, end to end through Kafka and PostgreSQL: policy events, then
orders, then what the worker tells the OMS, the customer and shipping, with `sweep --as-of` for the release."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from tests import factories
from tests.integration.conftest import Deployment, wait_for

T0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
TODAY = T0.date()
RELEASE = TODAY + dt.timedelta(days=10)


def ago(**delta: float) -> str:
    return (T0 - dt.timedelta(**delta)).isoformat()


def days_after_order(expected: dt.date, *, hours_ago: float) -> int:
    """Days from the date of an order placed `hours_ago` to `expected`: one more in the first hours of a UTC day."""
    return (expected - (T0 - dt.timedelta(hours=hours_ago)).date()).days


def restock(po: str, sku: str, supplier: str, quantity: int, expected: dt.date) -> dict[str, Any]:
    return factories.restock(sku, po, quantity, expected, T0, event_id=str(uuid.uuid4()), supplier_id=supplier)


def latest(deployment: Deployment, kind: str) -> dict[str, dict[str, Any]]:
    """The last message of each order on a topic (a status topic: the line's latest state)."""
    return {m.value["order_id"]: m.value for m in deployment.read(kind) if m.value}


def notices(deployment: Deployment, kind: str) -> dict[str, dict[str, Any]]:
    return {
        m.value["order_id"]: m.value
        for m in deployment.read("customer-notification")
        if m.value and m.value["type"] == kind
    }


def test_refusals_and_a_pre_order_from_policy_to_release(deployment: Deployment) -> None:
    deployment.start_worker(
        BACKORDER_MAX_PROMISE_DAYS="60",
        BACKORDER_SUPPLIER_MIN_ON_TIME_RATIO="0.8",
        BACKORDER_UNRELIABLE_SUPPLIER="refuse",
    )
    deployment.produce("product-policy", factories.policy("FAR", max_promise_days=10))
    deployment.produce("product-policy", factories.policy("SLOW", lead_time_days=90))  # the shop's 60 days
    deployment.produce("product-policy", factories.policy("PRE", available_from=RELEASE, backorders_allowed=False))
    deployment.produce("restock-expected", restock("PO-F1", "FAR", "acme", 5, TODAY + dt.timedelta(days=3)))
    deployment.produce("restock-expected", restock("PO-F2", "FAR", "acme", 10, TODAY + dt.timedelta(days=30)))
    deployment.produce("restock-expected", restock("PO-L1", "LATE", "slowco", 5, TODAY + dt.timedelta(days=5)))
    deployment.produce("restock-expected", restock("PO-H", "HIST", "slowco", 1, TODAY - dt.timedelta(days=10)))
    deployment.produce("inventory-received", factories.receipt("R-PRE", "PRE", 3, T0.isoformat()))
    wait_for(
        "policies, purchase orders and the pre-order stock",
        lambda: (
            deployment.query(
                """SELECT (SELECT count(*) FROM product_policy), (SELECT count(*) FROM expected_restock),
                      (SELECT count(*) FROM stock_receipt)"""
            )[0]
            == (3, 4, 1)
        ),
    )
    # slowco delivers 10 days late: on time for none of its deliveries, below the shop's 80%.
    deployment.produce(
        "inventory-received",
        factories.receipt("R-H", "HIST", 1, T0.isoformat(), purchase_order_id="PO-H", supplier_id="slowco"),
    )
    deployment.produce("order-created", factories.order("far-old", ago(days=2), [("FAR", 4)]))
    wait_for("far-old", lambda: "far-old" in latest(deployment, "backorder-status"))
    wait_for("the late delivery", lambda: deployment.query("SELECT count(*) FROM supplier_delivery")[0][0] == 1)

    # A VIP placed after far-old ranks ahead of it: its 3 units come with PO-F1 (within 10 days).
    deployment.produce("order-created", factories.order("far-vip", ago(hours=1), [("FAR", 3)], customer_tier="VIP"))
    # A standard order behind both waits for PO-F2, 33 days away: past the product's 10 days.
    deployment.produce("order-created", factories.order("far-new", ago(hours=1), [("FAR", 3)]))
    deployment.produce("order-created", factories.order("slow", ago(hours=1), [("SLOW", 2)]))
    deployment.produce("order-created", factories.order("late", ago(hours=1), [("LATE", 2)]))
    deployment.produce("order-created", factories.order("pre-std", ago(days=2), [("PRE", 2)]))
    deployment.produce("order-created", factories.order("pre-vip", ago(hours=1), [("PRE", 2)], customer_tier="VIP"))
    deployment.read("backorder-status", count=7)

    statuses = latest(deployment, "backorder-status")
    assert (statuses["far-vip"]["status"], statuses["far-vip"]["expected_ship_date"]) == (
        "BACKORDERED",
        TODAY + dt.timedelta(days=6),  # PO-F1 in 3 days, +1 handling, +2 acme's margin (no history yet)
    )
    refused = {order_id: statuses[order_id] for order_id in ("far-new", "slow", "late")}
    assert {order_id: s["status"] for order_id, s in refused.items()} == dict.fromkeys(refused, "REJECTED")
    assert refused["far-new"]["reason"] == (
        f"3 of 3 rejected: expected to ship {(TODAY + dt.timedelta(days=33)).isoformat()},"
        f" {days_after_order(TODAY + dt.timedelta(days=33), hours_ago=1)} days after the order;"
        " backorders are promised within 10 days"
    )
    assert refused["slow"]["reason"] == (
        f"2 of 2 rejected: expected to ship {(TODAY + dt.timedelta(days=91)).isoformat()},"
        f" {days_after_order(TODAY + dt.timedelta(days=91), hours_ago=1)} days after the order;"
        " backorders are promised within 60 days"
    )
    assert refused["late"]["reason"] == (
        "2 of 2 rejected: supplier slowco is unreliable (on time for 0 of its last 1 delivery)"
    )
    rejected = notices(deployment, "BACKORDER_REJECTED")
    assert sorted(rejected) == ["far-new", "late", "slow"]
    assert [(ln["quantity"], ln["status"]) for ln in rejected["late"]["lines"]] == [(2, "REJECTED")]

    # The pre-orders: accepted although the product takes no backorders, dated at the release, nothing shipped.
    for order_id in ("pre-std", "pre-vip"):
        assert statuses[order_id]["status"] == "BACKORDERED"
        assert statuses[order_id]["expected_ship_date"] == RELEASE + dt.timedelta(days=1)
        assert statuses[order_id]["reason"] == f"pre-order: nothing ships before the release on {RELEASE.isoformat()}"
    confirmed = notices(deployment, "BACKORDER_CONFIRMED")
    assert confirmed["pre-vip"]["expected_ship_date"] == RELEASE + dt.timedelta(days=1)
    assert confirmed["pre-vip"]["reason"] == f"pre-order: nothing ships before the release on {RELEASE.isoformat()}"
    assert deployment.read("fulfillment-requested", settle_s=0.5) == []
    assert deployment.stock("PRE") == (3, 3, 0, 0)  # held: available, received, nothing allocated or reserved

    # At the release date the sweep serves the queue in priority order: the VIP first, though it came last.
    deployment.cli("sweep", "--as-of", dt.datetime.combine(RELEASE, dt.time(), tzinfo=dt.UTC).isoformat())
    shipments = deployment.read("fulfillment-requested", count=2)
    assert sorted((m.value["order_id"], m.value["lines"][0]["quantity"]) for m in shipments if m.value) == [
        ("pre-std", 1),
        ("pre-vip", 2),
    ]
    assert all(m.value and m.value["caused_by_event_id"].startswith("release/PRE/") for m in shipments)
    wait_for("the allocated notices", lambda: len(notices(deployment, "BACKORDER_ALLOCATED")) == 2)
    statuses = latest(deployment, "backorder-status")
    assert statuses["pre-vip"]["status"] == "ALLOCATED"
    assert (statuses["pre-std"]["status"], statuses["pre-std"]["quantity_backordered"]) == ("PARTIALLY_ALLOCATED", 1)
    assert deployment.stock("PRE") == (0, 3, 3, 0)
