"""The business documents' customer timeline, through Kafka and PostgreSQL, with `sweep --as-of` for time."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import uuid
from typing import Any

from tests import factories
from tests.integration.conftest import ROOT, Deployment, wait_for

T0 = dt.datetime.now(dt.UTC).replace(microsecond=0)


def notices(deployment: Deployment, order_id: str, kind: str, count: int | None = None) -> list[dict[str, Any]]:
    found = [
        m.value
        for m in deployment.read("customer-notification", settle_s=1.0)
        if m.value and m.value["order_id"] == order_id and m.value["type"] == kind
    ]
    if count is not None:
        assert len(found) == count, f"{count} {kind} for {order_id} expected, got {len(found)}"
    return found


def sweep(deployment: Deployment, days: float, *, concurrently: int = 1) -> None:
    as_of = (T0 + dt.timedelta(days=days)).isoformat()
    env = deployment.env(BACKORDER_LOG_LEVEL="WARNING")
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "worker", "sweep", "--as-of", as_of],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(concurrently)
    ]
    for run in runs:
        out, _ = run.communicate(timeout=60)
        assert run.returncode == 0, out.decode()


def restock(po: str, sku: str, quantity: int, expected: dt.date) -> dict[str, Any]:
    return factories.restock(sku, po, quantity, expected, T0, event_id=str(uuid.uuid4()))


def test_the_customer_timeline_from_confirmation_to_shipment(deployment: Deployment) -> None:
    # Two workers, each also sweeping on its own every second (at the real time, when nothing is due yet).
    for _ in range(2):
        deployment.start_worker(BACKORDER_SWEEP_INTERVAL_SECONDS="1")
    expected_receipt = (T0 + dt.timedelta(days=20)).date()
    deployment.produce("restock-expected", restock("PO-1", "TL", 20, expected_receipt))
    wait_for("the purchase order", lambda: deployment.query("SELECT count(*) FROM expected_restock")[0][0] == 1)

    # Day 0: confirmed with a date (the receipt's date, +1 day handling, +2 days supplier margin).
    deployment.produce("order-created", factories.order("TL-1", (T0 - dt.timedelta(hours=1)).isoformat(), [("TL", 20)]))
    deployment.read("customer-notification", count=1)
    [confirmed] = notices(deployment, "TL-1", "BACKORDER_CONFIRMED", 1)
    assert confirmed["expected_ship_date"] == expected_receipt + dt.timedelta(days=3)
    assert confirmed["cancel_allowed"] is True

    # Day 7 (swept by two processes at once, while both workers sweep too) and day 14 (twice): one each.
    sweep(deployment, 7, concurrently=2)
    sweep(deployment, 7.5)
    sweep(deployment, 14)
    sweep(deployment, 14)
    wait_for("two updates", lambda: len(notices(deployment, "TL-1", "BACKORDER_STATUS_UPDATE")) >= 2)
    updates = notices(deployment, "TL-1", "BACKORDER_STATUS_UPDATE", 2)
    assert [u["reason"].split(":")[0] for u in updates] == ["day 7", "day 14"]
    assert all(u["expected_ship_date"] == confirmed["expected_ship_date"] for u in updates)

    # The stock arrives, the shipping service dispatches it: shipped, with tracking.
    deployment.produce(
        "inventory-received",
        factories.receipt("R-TL", "TL", 20, T0.isoformat(), purchase_order_id="PO-1", supplier_id="acme"),
    )
    [shipment] = deployment.read("fulfillment-requested", count=1)
    assert shipment.value is not None
    deployment.produce(
        "shipment-dispatched",
        {
            "event_id": str(uuid.uuid4()),
            "occurred_at": T0,
            "shipment_id": shipment.value["shipment_id"],
            "order_id": "TL-1",
            "carrier": "DHL",
            "tracking_number": "JD0146",
            "estimated_delivery": T0.date(),
        },
    )
    wait_for("the shipped notice", lambda: notices(deployment, "TL-1", "ORDER_SHIPPED"))
    [shipped] = notices(deployment, "TL-1", "ORDER_SHIPPED", 1)
    assert (shipped["carrier"], shipped["tracking_number"]) == ("DHL", "JD0146")
    assert [(ln["quantity"], ln["status"]) for ln in shipped["lines"]] == [(20, "SHIPPED")]
    [(status, shipped_at)] = deployment.query("SELECT status, shipped_at FROM order_line WHERE order_id = 'TL-1'")
    assert status == "SHIPPED" and shipped_at is not None
    assert deployment.query("SELECT count(*) FROM expected_restock WHERE quantity > 0") == [(0,)]
    [(days_late,)] = deployment.query("SELECT days_late FROM supplier_delivery WHERE receipt_id = 'R-TL'")
    assert days_late == -20  # came 20 days before its expected date: early counts as on time for the margin
    kept, counted = deployment.totals_and_aggregates()
    assert kept == counted and kept["fills"][1].count == 1  # the running totals count the shipped line

    # A shipment the worker never requested is refused, not guessed at.
    deployment.produce(
        "shipment-dispatched",
        {
            "event_id": str(uuid.uuid4()),
            "occurred_at": T0,
            "shipment_id": str(uuid.uuid4()),
            "order_id": "TL-1",
            "carrier": "DHL",
            "tracking_number": "X",
            "estimated_delivery": None,
        },
    )
    [dead] = deployment.read("dlq", count=1)
    assert dead.headers["dlq.error.class"] == b"InvalidEvent"
    assert b"was never requested" in dead.headers["dlq.error.message"]


def test_a_stale_backorder_is_cancelled_and_its_units_go_to_the_next_line(deployment: Deployment) -> None:
    deployment.start_worker()
    deployment.produce("product-policy", factories.policy("ST", stale_after_days=30))
    deployment.produce("inventory-received", factories.receipt("R-ST", "ST", 2))
    wait_for(
        "policy and stock",
        lambda: (
            deployment.query("SELECT (SELECT count(*) FROM product_policy), (SELECT count(*) FROM stock_receipt)")[0]
            == (1, 1)
        ),
    )
    deployment.produce(
        "order-created",
        factories.order("old", (T0 - dt.timedelta(days=25)).isoformat(), [("ST", 5)], split_preference="SHIP_COMPLETE"),
    )
    deployment.read("customer-notification", count=1)  # it holds the 2 units on hand
    deployment.produce("order-created", factories.order("next", (T0 - dt.timedelta(days=1)).isoformat(), [("ST", 2)]))
    deployment.read("customer-notification", count=2)

    sweep(deployment, 6)  # "old" has waited 31 days
    wait_for("the cancellation", lambda: notices(deployment, "old", "BACKORDER_CANCELLED"))
    [cancelled] = notices(deployment, "old", "BACKORDER_CANCELLED", 1)
    assert cancelled["reason"] == "STALE; refund due"
    assert [(ln["quantity"], ln["status"]) for ln in cancelled["lines"]] == [(5, "CANCELLED")]
    [shipment] = deployment.read("fulfillment-requested", count=1)
    assert shipment.value is not None
    assert (shipment.value["order_id"], shipment.value["lines"][0]["quantity"]) == ("next", 2)
    wait_for("the metric", lambda: deployment.workers[0].metric("backorder_cancelled_lines_total", reason="STALE") == 1)
