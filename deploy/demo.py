"""`make run`: the whole thing on one machine, with a short demo scenario.

Starts Kafka and PostgreSQL (deploy/localstack.py), migrates the database, creates the topics,
starts `backorder-worker run`, then plays the business documents' example: SKU WIDGET-PRO-BLUE is
out of stock, three orders wait for it, 50 units arrive, then 10 more. The worker's log shows each
batch; /metrics shows the counts. Ctrl-C stops the worker (it drains) and then everything else.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import localstack
from confluent_kafka import Producer

from worker.adapters.avro import AvroCodec

ROOT = Path(__file__).resolve().parent.parent
SKU = "WIDGET-PRO-BLUE"
SHOWN_METRICS = (
    "backorder_events_consumed_total",
    "backorder_open_lines",
    "backorder_open_units",
    "backorder_units_received_total",
    "backorder_units_allocated_total",
    "backorder_outbox_backlog",
)


def say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


def _at(day: str) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)


def scenario(run: str) -> list[tuple[str, str, dict[str, Any], str]]:
    """(topic setting, record, fields, what a person should see) in the order they are sent."""

    def order(number: str, day: str, quantity: int, sku: str = SKU) -> dict[str, Any]:
        order_id = f"{run}-{number}"
        return {
            "event_id": str(uuid.uuid4()),
            "occurred_at": _at(day),
            "order_id": order_id,
            "customer_id": f"customer-{number}",
            "customer_tier": "STANDARD",
            "shipping_service": "STANDARD",
            "need_by": None,
            "split_preference": None,
            "currency": "USD",
            "lines": [
                {
                    "line_id": "1",
                    "sku": sku,
                    "product_name": "Widget Pro (blue)",
                    "quantity": quantity,
                    "unit_price_minor": 4999,
                }
            ],
        }

    def receipt(number: str, quantity: int, sku: str = SKU) -> dict[str, Any]:
        return {
            "event_id": str(uuid.uuid4()),
            "occurred_at": dt.datetime.now(dt.UTC),
            "receipt_id": f"{run}-{number}",
            "sku": sku,
            "quantity": quantity,
            "supplier_id": "acme",
            "purchase_order_id": None,
        }

    return [
        ("order-created", "OrderCreated", order("100", "2026-01-05T10:00", 20), "order 100 (20) is backordered"),
        ("order-created", "OrderCreated", order("101", "2026-01-06T10:00", 20), "order 101 (20) is backordered"),
        ("order-created", "OrderCreated", order("102", "2026-01-08T10:00", 20), "order 102 (20) is backordered"),
        (
            "inventory-received",
            "InventoryReceived",
            receipt("R1", 50),
            "50 units arrive: 100 and 101 ship complete, 102 ships 10 and waits for 10",
        ),
        ("inventory-received", "InventoryReceived", receipt("R2", 10), "10 more units arrive: 102 completes"),
        ("inventory-received", "InventoryReceived", receipt("R3", 5, "GADGET-MINI"), "5 GADGET-MINI are in stock"),
        (
            "order-created",
            "OrderCreated",
            order("103", "2026-01-09T10:00", 2, "GADGET-MINI"),
            "order 103 (2 GADGET-MINI) ships at once",
        ),
    ]


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def wait_metrics(port: int, worker: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"demo: the worker exited with {worker.returncode}")
        try:
            metrics_text(port)
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("demo: the worker's /metrics did not answer")


def play(env: dict[str, str], port: int) -> None:
    codec = AvroCodec.from_directory()
    producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
    topics = {
        "order-created": env.get("BACKORDER_TOPIC_ORDER_CREATED", "order-created"),
        "inventory-received": env.get("BACKORDER_TOPIC_INVENTORY_RECEIVED", "inventory-received"),
    }
    run = f"demo-{uuid.uuid4().hex[:6]}"
    for topic, record, fields, story in scenario(run):
        key = fields.get("order_id") or fields["sku"]
        producer.produce(topics[topic], key=key.encode(), value=codec.encode(f"backorder.{record}", fields))
        producer.flush(30)
        say(story)
        time.sleep(1.5)
    time.sleep(1.0)
    shown = [line for line in metrics_text(port).splitlines() if line.startswith(SHOWN_METRICS)]
    say("from /metrics:\n  " + "\n  ".join(shown))


def main() -> int:
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with localstack.local_stack() as endpoints:
        env = {**os.environ, **endpoints.environ()}
        env.setdefault("BACKORDER_METRICS_PORT", "9108")
        port = int(env["BACKORDER_METRICS_PORT"])
        cli = [sys.executable, "-m", "worker"]
        localstack.prepare_worker(env)
        # Its own session: Ctrl-C reaches only this script, which stops the worker and then the stack in order.
        worker = subprocess.Popen([*cli, "run"], env=env, cwd=ROOT, start_new_session=True)
        try:
            wait_metrics(port, worker)
            say(f"worker running; metrics at http://127.0.0.1:{port}/metrics")
            if not stopping:
                play(env, port)
            say("demo scenario played; the worker keeps running. Ctrl-C stops everything.")
            while not stopping and worker.poll() is None:
                time.sleep(0.5)
        finally:
            if worker.poll() is None:
                say("stopping the worker (it finishes its batch and flushes the outbox)")
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    worker.kill()
            say("stopping Kafka and PostgreSQL")
    say("stopped")
    return 0 if worker.returncode in (0, None) else worker.returncode


if __name__ == "__main__":
    sys.exit(main())
