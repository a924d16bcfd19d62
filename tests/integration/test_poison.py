"""No message stops the worker: values the database refuses are dead-lettered, the batch around them goes on."""

from __future__ import annotations

import secrets

from tests import factories
from tests.integration.conftest import Deployment, wait_for

SKU = "POISON-SKU"


def too_long_for_an_index_row() -> str:
    return secrets.token_hex(1500)  # 3,000 characters PostgreSQL cannot compress below a btree row's limit


def test_values_the_database_refuses_are_dead_lettered_and_their_batch_is_processed(deployment: Deployment) -> None:
    # Everything is on the topics before the worker starts, so that it arrives in one batch.
    key = "one-partition"
    deployment.produce("order-created", factories.order("O-1", "2026-01-01", [(SKU, 2)]), key=key)
    deployment.produce("order-created", factories.order("O-NUL", "2026-01-01", [("S\x00KU", 1)]), key=key)
    deployment.produce("order-created", factories.order(too_long_for_an_index_row(), "2026-01-01", [(SKU, 1)]), key=key)
    deployment.produce("order-created", factories.order("O-2", "2026-01-02", [(SKU, 1)]), key=key)
    deployment.produce("inventory-received", factories.receipt("R-LONG", too_long_for_an_index_row(), 5), key=key)
    deployment.produce("inventory-received", factories.receipt("R-1", SKU, 3), key=key)
    worker = deployment.start_worker(BACKORDER_BATCH_SIZE="500", BACKORDER_BATCH_TIMEOUT_SECONDS="2")

    dead = deployment.read("dlq", count=3)
    offsets = sorted((m.headers["dlq.original.topic"].decode(), int(m.headers["dlq.original.offset"])) for m in dead)
    assert offsets == sorted(
        [
            (deployment.topics["order-created"], 1),
            (deployment.topics["order-created"], 2),
            (deployment.topics["inventory-received"], 0),
        ]
    )
    for m in dead:
        assert len(m.headers["dlq.error.message"]) <= 1100  # the reason, not the input echoed back

    shipped = {
        m.value["order_id"]: m.value["lines"][0]["quantity"]
        for m in deployment.read("fulfillment-requested", count=2)
        if m.value
    }
    assert shipped == {"O-1": 2, "O-2": 1}

    # The partition moves on: a later order is handled too, and the worker never stopped.
    deployment.produce("order-created", factories.order("O-3", "2026-01-03", [(SKU, 1)]), key=key)
    wait_for("the next order", lambda: deployment.query("SELECT 1 FROM customer_order WHERE order_id = 'O-3'"))
    assert worker.proc.poll() is None
