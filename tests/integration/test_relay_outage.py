"""The relay through a broker that stops answering for longer than a round waits: each event published once, each
order's in the order they were written."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path
from typing import Any

import localstack
import psycopg

from tests import factories
from tests.integration.conftest import UNPUBLISHED, Deployment, wait_for
from worker.adapters.avro import AvroCodec

ORDERS = 30
STEPS = 3  # statuses an order, written one after the other: quantity_allocated 1, 2, 3
ROUND_WAIT_S = 1.0 + 5  # BACKORDER_RELAY_DELIVERY_TIMEOUT_SECONDS below, and the 5 s a round adds


def test_events_kafka_does_not_answer_for_a_while_are_published_once_each_and_in_order(
    stack: localstack.Endpoints, codec: AvroCodec, own_broker: localstack.KafkaBroker, tmp_path: Path
) -> None:
    world = Deployment(localstack.Endpoints(own_broker.bootstrap_servers, stack.database_url), codec, tmp_path, 3)
    try:
        worker = world.start_worker(BACKORDER_RELAY_DELIVERY_TIMEOUT_SECONDS="1")
        world.produce("order-created", factories.order("RO-0", "2026-04-01", [("RO-SKU", 1)]))
        wait_for("a first order", lambda: world.query("SELECT 1 FROM customer_order WHERE order_id = 'RO-0'"))
        wait_for("its events published (the producer has met the broker)", lambda: world.query(UNPUBLISHED) == [(0,)])

        own_broker.freeze()  # connections open, nothing answers
        topic = world.topics["backorder-status"]
        with psycopg.connect(world.database_url, autocommit=True) as conn, conn.cursor() as cur:
            for step in range(1, STEPS + 1):
                for n in range(1, ORDERS + 1):
                    order_id = f"RO-{n}"
                    record: dict[str, Any] = {
                        "event_id": str(uuid.uuid4()),
                        "occurred_at": dt.datetime.now(dt.UTC),
                        "order_id": order_id,
                        "line_id": "1",
                        "sku": "RO-SKU",
                        "status": "PARTIALLY_ALLOCATED",
                        "quantity_ordered": STEPS + 1,
                        "quantity_allocated": step,
                        "quantity_backordered": STEPS + 1 - step,
                        "expected_ship_date": None,
                        "reason": None,
                    }
                    value = codec.encode("backorder.BackorderStatusChanged", record)
                    cur.execute(
                        "INSERT INTO outbox (event_id, topic, message_key, message_value) VALUES (%s, %s, %s, %s)",
                        (record["event_id"], topic, order_id.encode(), value),
                    )
        wait_for("a round to end unanswered", lambda: worker.logged("outbox_publish_incomplete"), timeout_s=30)
        time.sleep(2 * ROUND_WAIT_S)  # two more rounds' waits: nothing must be handed to the producer again
        own_broker.thaw()
        wait_for("the outbox empty", lambda: world.query(UNPUBLISHED) == [(0,)], timeout_s=60)

        statuses = [
            m.value for m in world.read("backorder-status", settle_s=3.0) if m.value and m.value["order_id"] != "RO-0"
        ]
        by_order: dict[str, list[int]] = {}
        for status in statuses:  # per partition in offset order, and an order's events are on one partition
            by_order.setdefault(status["order_id"], []).append(status["quantity_allocated"])
        assert by_order == {f"RO-{n}": list(range(1, STEPS + 1)) for n in range(1, ORDERS + 1)}
        assert not [r for r in worker.logged("outbox_publish_failed") if r.get("error") == "_MSG_TIMED_OUT"]
        assert worker.proc.poll() is None
        worker.terminate()
    finally:
        world.close()
