"""Two workers in one group share SKUs across partitions; one is killed midway. Stock is never over-allocated."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tests import factories
from tests.integration.conftest import Deployment, wait_for

SKUS = ["SKU-A", "SKU-B", "SKU-C", "SKU-D"]
ORDERS = 80
RECEIPTS = 24
PARTITIONS = 4
INBOUND_TOPICS = 6  # order-created, inventory-received, order-cancelled, product-policy, restock-expected,
# shipment-dispatched


@pytest.mark.parametrize("deployment", [PARTITIONS], indirect=True)
def test_two_workers_never_allocate_more_than_received(deployment: Deployment) -> None:
    rng = random.Random(20260105)
    events: list[tuple[str, dict[str, object]]] = []
    demand: Counter[str] = Counter()
    for i in range(ORDERS):
        skus = rng.sample(SKUS, rng.choice([1, 2]))
        lines = [(sku, rng.randint(1, 6)) for sku in skus]
        for sku, quantity in lines:
            demand[sku] += quantity
        day = f"2026-03-{1 + i % 28:02d}T{i % 24:02d}:00"
        events.append(("order-created", factories.order(f"O-{i:03d}", day, lines)))
    received: Counter[str] = Counter()
    for i in range(RECEIPTS):
        sku, quantity = SKUS[i % len(SKUS)], rng.randint(3, 15)
        received[sku] += quantity
        events.append(("inventory-received", factories.receipt(f"R-{i:03d}", sku, quantity)))
    rng.shuffle(events)

    first = deployment.start_worker(BACKORDER_BATCH_SIZE="7")
    second = deployment.start_worker(BACKORDER_BATCH_SIZE="7")
    wait_for(
        "both workers to share every inbound partition",
        lambda: (
            first.assignment()
            and second.assignment()
            and len(set(first.assignment()) | set(second.assignment())) == INBOUND_TOPICS * PARTITIONS
        ),
    )
    for kind, record in events[: len(events) // 2]:
        deployment.produce(kind, record)
    # Incremental (cooperative-sticky) assignment may leave a worker without order or receipt partitions.
    busy = wait_for(
        "a worker to have handled something",
        lambda: next((w for w in (first, second) if w.metric("backorder_events_consumed_total") > 0), None),
    )
    busy.kill()
    deployment.start_worker(BACKORDER_BATCH_SIZE="7")
    for kind, record in events[len(events) // 2 :]:
        deployment.produce(kind, record)

    wait_for(
        "every order and receipt to be recorded",
        lambda: (
            deployment.query("SELECT (SELECT count(*) FROM customer_order), (SELECT count(*) FROM stock_receipt)")[0]
            == (ORDERS, RECEIPTS)
        ),
        timeout_s=120,
    )
    wait_for(
        "the outbox to drain",
        lambda: deployment.query("SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0] == 0,
        timeout_s=60,
    )

    stock = {sku: deployment.stock(sku)[:3] for sku in SKUS}
    for sku in SKUS:
        available, got, allocated = stock[sku]
        assert got == received[sku]
        assert allocated <= got
        assert allocated == min(got, demand[sku]), sku  # every unit that could be given was given
        assert available == got - allocated

    per_line = dict(
        ((o, ln), q)
        for o, ln, q in deployment.query(
            "SELECT order_id, line_id, sum(quantity) FROM allocation GROUP BY order_id, line_id"
        )
    )
    for order_id, line_id, quantity, allocated, status in deployment.query(
        "SELECT order_id, line_id, quantity, quantity_allocated, status FROM order_line"
    ):
        assert allocated == per_line.get((order_id, line_id), 0)
        expected = "ALLOCATED" if allocated == quantity else "PARTIALLY_ALLOCATED" if allocated else "BACKORDERED"
        assert status == expected

    shipments = {
        m.value["event_id"]: m.value for m in deployment.read("fulfillment-requested", settle_s=3.0) if m.value
    }
    shipped: Counter[str] = Counter()
    for shipment in shipments.values():
        for line in shipment["lines"]:
            shipped[line["sku"]] += line["quantity"]
    assert {sku: shipped[sku] for sku in SKUS} == {sku: stock[sku][2] for sku in SKUS}
