"""The business documents' customer timeline, through Kafka and PostgreSQL, with `sweep --as-of` for time."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg_pool import ConnectionPool

from tests import factories
from tests.integration.conftest import ROOT, Deployment, wait_for
from tests.unit.test_batch import CODEC, TOPICS, message
from worker.adapters.avro import EventSerializer
from worker.adapters.postgres.unit_of_work import PostgresUnitOfWorkFactory
from worker.domain.events import BackorderStatusChanged, CustomerNotification, FulfillmentRequested
from worker.domain.policy import ShopPolicy
from worker.service.batch import handle_batch
from worker.service.book import Book
from worker.service.handlers import Outcome, sweep_once
from worker.service.messages import InboundMessage

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


def test_a_status_update_is_not_sent_to_an_order_a_transaction_gave_its_units_meanwhile(deployment: Deployment) -> None:
    """A sweep finds an order waiting (its day-7 update due) while another transaction, not yet committed, gives its
    line the units of a receipt. The sweep tells an order only under its hold, taken without waiting: it leaves this
    one to the next sweep (it does not wait for the transaction), which finds it allocated. The customer is told the
    units are allocated, and never then "still awaiting inventory"."""
    placed = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)
    day_8 = placed + dt.timedelta(days=8)
    order = message(0, "orders", factories.order("SU-1", placed.isoformat(), [("SU-SKU", 1)]))
    receipt = message(1, "receipts", factories.receipt("SU-R", "SU-SKU", 1))
    given, release = threading.Event(), threading.Event()
    serializer = EventSerializer(
        CODEC,
        {FulfillmentRequested: "fulfillments", CustomerNotification: "notices", BackorderStatusChanged: "statuses"},
    )

    class Lingering(PostgresUnitOfWorkFactory):
        """Its transactions keep what they locked a while after their work, before they commit."""

        @contextmanager
        def __call__(self, *, rollback: bool = False) -> Iterator[Book]:
            with super().__call__(rollback=rollback) as book:
                yield book
                given.set()
                release.wait(30)

    def handle(messages: list[InboundMessage], factory: PostgresUnitOfWorkFactory, now: dt.datetime) -> None:
        results = handle_batch(
            messages, decoder=CODEC, expected_records=TOPICS, unit_of_work=factory, shop=ShopPolicy(), now=now
        )
        assert [r.outcome for r in results] == [Outcome.PROCESSED]

    with ConnectionPool(deployment.database_url, min_size=2, max_size=4) as pool:
        plain = PostgresUnitOfWorkFactory(pool, serializer, "dlq")
        handle([order], plain, placed)  # it waits: nothing in stock
        receiving = threading.Thread(target=handle, args=([receipt], Lingering(pool, serializer, "dlq"), day_8))
        receiving.start()
        assert given.wait(30)  # the line is given its unit; not committed yet
        swept: list[int | None] = []
        sweeping = threading.Thread(target=lambda: swept.append(sweep_once(plain, ShopPolicy(), day_8, wait=True)))
        sweeping.start()
        sweeping.join(10.0)
        waited = sweeping.is_alive()
        release.set()
        receiving.join(30)
        sweeping.join(30)
        swept.append(sweep_once(plain, ShopPolicy(), day_8 + dt.timedelta(hours=1), wait=True))

    notices = [
        CODEC.decode(value)[1]["type"]
        for (value,) in deployment.query(
            "SELECT message_value FROM outbox WHERE topic = 'notices' AND message_key = %s ORDER BY outbox_id", b"SU-1"
        )
    ]
    assert notices == ["BACKORDER_CONFIRMED", "BACKORDER_ALLOCATED"]
    assert not waited and swept == [0, 0]
