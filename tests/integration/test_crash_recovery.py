"""A worker killed with SIGKILL loses nothing and allocates nothing twice."""

from __future__ import annotations

import time

from tests import factories
from tests.integration.conftest import Deployment, wait_for

SKU = "CRASH-SKU"


def test_events_committed_before_a_kill_are_published_after_restart(deployment: Deployment) -> None:
    # The relay is off, so the kill lands after the batch committed in PostgreSQL and before any publish.
    first = deployment.start_worker(BACKORDER_RELAY_ENABLED="false")
    for i in range(5):
        deployment.produce("order-created", factories.order(f"O-{i}", f"2026-02-0{i + 1}", [(SKU, 4)]))
    wait_for("the orders to be backordered", lambda: first.metric("backorder_events_consumed_total") == 5)
    deployment.produce("inventory-received", factories.receipt("R-1", SKU, 10))

    def committed() -> bool:
        rows = deployment.query("SELECT count(*) FROM stock_receipt")
        return rows[0][0] == 1 and first.metric("backorder_events_consumed_total") == 6

    wait_for("the batch to commit", committed)
    in_outbox = dict(deployment.query("SELECT event_id::text, topic FROM outbox WHERE published_at IS NULL"))
    # 5 statuses + 5 confirmations for the orders; 3 shipments, 3 statuses, 3 notices for the receipt.
    assert len(in_outbox) == 19
    first.kill()
    assert deployment.read("backorder-status", settle_s=1.0) == []

    second = deployment.start_worker()
    published = []
    for kind in ("fulfillment-requested", "customer-notification", "backorder-status"):
        expected = sum(1 for topic in in_outbox.values() if topic == deployment.topics[kind])
        published += deployment.read(kind, count=expected)
    wait_for("the outbox to drain", lambda: second.metric("backorder_outbox_backlog") == 0)

    ids = [m.value["event_id"] for m in published if m.value]
    assert sorted(ids) == sorted(in_outbox)  # every committed event, with its id, exactly once
    shipments = [m.value for m in published if m.value and m.topic == deployment.topics["fulfillment-requested"]]
    assert sum(line["quantity"] for s in shipments for line in s["lines"]) == 10
    available, _, allocated, _ = deployment.stock(SKU)
    [(allocations,)] = deployment.query("SELECT coalesce(sum(quantity), 0) FROM allocation")
    assert (allocated, available, allocations) == (10, 0, 10)

    # Once the second worker has handled something new (so it owns the partitions and is past whatever
    # was redelivered), SIGTERM commits its offsets: the next worker consumes only what comes after.
    deployment.produce("inventory-received", factories.receipt("R-2", SKU, 1))
    wait_for(
        "the second worker to handle R-2",
        lambda: second.metric("backorder_events_consumed_total", outcome="processed") == 1,
    )
    assert second.terminate() == 0
    third = deployment.start_worker()
    deployment.produce("inventory-received", factories.receipt("R-3", SKU, 1))
    wait_for("the third receipt", lambda: third.metric("backorder_events_consumed_total") >= 1)
    assert third.metric("backorder_events_consumed_total", outcome="duplicate") == 0
    assert third.metric("backorder_events_consumed_total", outcome="processed") == 1


def test_a_receipt_killed_between_its_steps_gives_the_rest_after_restart(deployment: Deployment) -> None:
    """400 waiting one-unit orders and a receipt for all of them, in steps of 100. The last order served is held
    by another transaction, so the worker commits three steps and waits at the fourth: killed there, it leaves the
    receipt's offset unstored. The next worker is handed the receipt again, a duplicate now, and gives what is on
    hand: every line once, one fulfillment request an order."""
    orders, step = 400, 100
    first = deployment.start_worker(BACKORDER_TRANSACTION_MAX_LINES=str(step))
    for i in range(orders):
        placed = f"2026-02-01T{i // 60:02d}:{i % 60:02d}"
        deployment.produce("order-created", factories.order(f"O-{i:04d}", placed, [(SKU, 1)]))
    wait_for("the orders", lambda: first.metric("backorder_events_consumed_total") == orders, timeout_s=60)

    with deployment.db() as holder, holder.transaction(force_rollback=True):
        holder.execute("SELECT 1 FROM customer_order WHERE order_id = %s FOR UPDATE", (f"O-{orders - 1:04d}",))
        deployment.produce("inventory-received", factories.receipt("R-DEEP", SKU, orders))
        three_steps = [(3 * step,)]
        wait_for("three steps", lambda: deployment.query("SELECT count(*) FROM allocation") == three_steps)
        time.sleep(0.5)
        assert deployment.query("SELECT count(*) FROM allocation") == three_steps  # waiting at the fourth
        first.kill()

    second = deployment.start_worker()
    wait_for("every line", lambda: deployment.query("SELECT count(*) FROM allocation") == [(orders,)], timeout_s=60)
    assert deployment.query("SELECT count(DISTINCT (order_id, line_id)) FROM allocation") == [(orders,)]
    available, received, allocated, _ = deployment.stock(SKU)
    assert (available, received, allocated) == (0, orders, orders)
    wait_for("the receipt again", lambda: second.metric("backorder_events_consumed_total", outcome="duplicate") >= 1)

    requests = [m.value for m in deployment.read("fulfillment-requested", count=orders) if m.value]
    ids_by_order: dict[str, set[str]] = {}
    for request in requests:
        ids_by_order.setdefault(request["order_id"], set()).add(request["event_id"])
    assert len(ids_by_order) == orders and all(len(ids) == 1 for ids in ids_by_order.values())
