"""`make bench`: how fast one worker drains a backlog on the local stack. Prints figures; asserts nothing.

Pre-loads ORDERS orders (one line each, SKUS SKUs, nothing in stock) and then one receipt per SKU
covering every order, starts one `backorder-worker run`, and measures the time until every event is
handled and until every outbound event is published. Traffic stays on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import localstack
import psycopg
from confluent_kafka import Producer

from worker.adapters.avro import AvroCodec

ROOT = Path(__file__).resolve().parent.parent
LIMIT_S = 600.0


def wait(what: str, check: object, started: float) -> float:
    deadline = time.monotonic() + LIMIT_S
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.05)
    raise SystemExit(f"bench: gave up waiting for {what} after {LIMIT_S:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--skus", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    codec = AvroCodec.from_directory()
    with localstack.local_stack() as endpoints:
        env = {
            **os.environ,
            **endpoints.environ(),
            "BACKORDER_METRICS_PORT": str(localstack.free_port()),
            "BACKORDER_BATCH_SIZE": str(args.batch_size),
            "BACKORDER_LOG_LEVEL": "WARNING",
            "BACKORDER_GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}",
        }
        cli = [sys.executable, "-m", "worker"]
        localstack.prepare_worker(env, quiet=True)
        with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
            start_orders = conn.execute("SELECT count(*) FROM customer_order").fetchone()[0]  # type: ignore[index]
            start_receipts = conn.execute("SELECT count(*) FROM stock_receipt").fetchone()[0]  # type: ignore[index]

        run = uuid.uuid4().hex[:6]
        producer = Producer({"bootstrap.servers": endpoints.kafka_bootstrap_servers, "linger.ms": 20})
        placed = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        demand = [0] * args.skus
        for i in range(args.orders):
            sku, quantity = i % args.skus, 1 + i % 3
            demand[sku] += quantity
            record = {
                "event_id": str(uuid.uuid4()),
                "occurred_at": placed + dt.timedelta(seconds=i),
                "order_id": f"{run}-{i}",
                "customer_id": f"c{i % 997}",
                "customer_tier": "STANDARD",
                "shipping_service": "STANDARD",
                "need_by": None,
                "split_preference": None,
                "currency": "USD",
                "lines": [
                    {
                        "line_id": "1",
                        "sku": f"{run}-SKU-{sku}",
                        "product_name": "Bench item",
                        "quantity": quantity,
                        "unit_price_minor": 1000,
                    }
                ],
            }
            producer.produce(
                "order-created", key=record["order_id"].encode(), value=codec.encode("backorder.OrderCreated", record)
            )
            producer.poll(0)
        for sku, units in enumerate(demand):
            record = {
                "event_id": str(uuid.uuid4()),
                "occurred_at": placed + dt.timedelta(days=30),
                "receipt_id": f"{run}-R-{sku}",
                "sku": f"{run}-SKU-{sku}",
                "quantity": units,
                "supplier_id": None,
                "purchase_order_id": None,
            }
            producer.produce(
                "inventory-received",
                key=record["sku"].encode(),
                value=codec.encode("backorder.InventoryReceived", record),
            )
        producer.flush(60)
        events = args.orders + args.skus
        print(f"bench: {args.orders} orders on {args.skus} SKUs and {args.skus} receipts are on the topics")

        started = time.monotonic()
        worker = subprocess.Popen([*cli, "run"], env=env, cwd=ROOT, start_new_session=True)
        try:
            with psycopg.connect(endpoints.database_url, autocommit=True) as conn:

                def handled() -> bool:
                    row = conn.execute(
                        "SELECT (SELECT count(*) FROM customer_order), (SELECT count(*) FROM stock_receipt)"
                    ).fetchone()
                    return row == (start_orders + args.orders, start_receipts + args.skus)

                def drained() -> bool:
                    row = conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()
                    return row == (0,)

                handled_s = wait("every event to be handled", handled, started)
                published_s = wait("the outbox to drain", drained, started)
                span = conn.execute(
                    "SELECT extract(epoch FROM max(t) - min(t)) FROM (SELECT recorded_at AS t FROM customer_order"
                    " WHERE order_id LIKE %(run)s UNION ALL SELECT recorded_at FROM stock_receipt"
                    " WHERE receipt_id LIKE %(run)s) AS s",
                    {"run": f"{run}-%"},
                ).fetchone()[0]  # type: ignore[index]
                outbound = conn.execute(
                    "SELECT count(*) FROM outbox WHERE created_at >= now() - %s",
                    (dt.timedelta(seconds=published_s + 5),),
                ).fetchone()[0]  # type: ignore[index]
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
    print(
        f"bench: {events} inbound events handled in {handled_s:.1f}s from worker start "
        f"({events / handled_s:.0f} events/s, includes start-up and the group join)"
    )
    print(f"bench: {outbound} outbound events published by {published_s:.1f}s ({outbound / published_s:.0f} events/s)")
    print(f"bench: first to last event recorded in {span:.1f}s ({events / float(span):.0f} events/s while consuming)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
