"""`make run`: the whole thing on one machine, with a demo that plays the product's stories.

Starts Kafka and PostgreSQL (deploy/localstack.py), migrates the database, creates the topics,
starts `backorder-worker run`, then plays five short stories as the OMS and the warehouse would send
them, and prints after each step what the worker published (shipments for the shipping service,
e-mails for the customer, line statuses for the OMS):

1. first in, first out: three orders wait for WIDGET-PRO-BLUE, 50 units arrive, then 10 more;
2. an SKU in stock ships at once;
3. a VIP order is served before an older standard one, and an expected restock gives both a date;
4. a ship-complete order holds the units that arrive until it can ship whole;
5. a cancellation releases the units the cancelled order held to the next order in line.

It ends with `backorder-worker report` and where to look (/metrics, `queue`, `decisions`), and keeps
the worker running until Ctrl-C, which stops the worker (it drains) and then everything else.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import localstack
from confluent_kafka import Consumer, Producer, TopicPartition

from worker.adapters.avro import AvroCodec

ROOT = Path(__file__).resolve().parent.parent
SHOWN_METRICS = (
    "backorder_events_consumed_total",
    "backorder_units_received_total",
    "backorder_units_allocated_total",
    "backorder_open_lines",
    "backorder_open_units",
)
# Inbound topic -> (its setting's variable, its Avro record); outbound topics the demo shows.
INBOUND = {
    "order-created": ("BACKORDER_TOPIC_ORDER_CREATED", "OrderCreated"),
    "inventory-received": ("BACKORDER_TOPIC_INVENTORY_RECEIVED", "InventoryReceived"),
    "restock-expected": ("BACKORDER_TOPIC_RESTOCK_EXPECTED", "RestockExpected"),
    "order-cancelled": ("BACKORDER_TOPIC_ORDER_CANCELLED", "OrderCancelled"),
}
OUTBOUND = {
    "fulfillment-requested": "BACKORDER_TOPIC_FULFILLMENT_REQUESTED",
    "backorder-status": "BACKORDER_TOPIC_BACKORDER_STATUS",
    "customer-notification": "BACKORDER_TOPIC_CUSTOMER_NOTIFICATION",
}
RESTOCK_IN_DAYS = 10


def say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


def heading(text: str) -> None:
    print(f"\ndemo: ==== {text} ====", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Step:
    topic: str  # an INBOUND key
    fields: dict[str, Any]
    story: str
    answered: bool = True  # False: nothing is published in answer (stock arriving for nobody waiting)


@dataclass(frozen=True)
class Chapter:
    title: str
    steps: list[Step]


def scenario(run: str, now: dt.datetime) -> list[Chapter]:
    """The stories, as the OMS and the warehouse would send them; order ids start with `run`."""

    def order(number: str, placed_days_ago: float, sku: str, quantity: int, **fields: Any) -> dict[str, Any]:
        return {
            "event_id": str(uuid.uuid4()),
            "occurred_at": now - dt.timedelta(days=placed_days_ago),
            "order_id": f"{run}-{number}",
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
                    "product_name": sku.title(),
                    "quantity": quantity,
                    "unit_price_minor": 4999,
                }
            ],
            **fields,
        }

    def receipt(number: str, sku: str, quantity: int) -> dict[str, Any]:
        return {
            "event_id": str(uuid.uuid4()),
            "occurred_at": now,
            "receipt_id": f"{run}-{number}",
            "sku": sku,
            "quantity": quantity,
            "supplier_id": "acme",
            "purchase_order_id": None,
        }

    restock = {
        "event_id": str(uuid.uuid4()),
        "occurred_at": now,
        "purchase_order_id": f"{run}-PO-7",
        "sku": "LAMP-ARC",
        "supplier_id": "acme",
        "quantity": 6,
        "expected_date": (now + dt.timedelta(days=RESTOCK_IN_DAYS)).date(),
    }
    cancellation = {
        "event_id": str(uuid.uuid4()),
        "occurred_at": now,
        "order_id": f"{run}-400",
        "line_ids": [],
        "reason": "CUSTOMER_REQUEST",
        "note": "found it elsewhere",
    }
    return [
        Chapter(
            "1. First in, first out: WIDGET-PRO-BLUE is out of stock",
            [
                Step("order-created", order("100", 5, "WIDGET-PRO-BLUE", 20), "order 100 (20 units) is backordered"),
                Step("order-created", order("101", 4, "WIDGET-PRO-BLUE", 20), "order 101 (20 units) is backordered"),
                Step("order-created", order("102", 2, "WIDGET-PRO-BLUE", 20), "order 102 (20 units) is backordered"),
                Step(
                    "inventory-received",
                    receipt("R1", "WIDGET-PRO-BLUE", 50),
                    "50 units arrive: 100 and 101 ship complete, 102 ships 10 and waits for 10",
                ),
                Step("inventory-received", receipt("R2", "WIDGET-PRO-BLUE", 10), "10 more units arrive: 102 completes"),
            ],
        ),
        Chapter(
            "2. In stock: no backorder at all",
            [
                Step("inventory-received", receipt("R3", "GADGET-MINI", 5), "5 GADGET-MINI are in stock", False),
                Step("order-created", order("103", 0, "GADGET-MINI", 2), "order 103 (2 GADGET-MINI) ships at once"),
            ],
        ),
        Chapter(
            "3. A VIP is served before an older standard order; an expected restock gives dates",
            [
                Step(
                    "order-created",
                    order("200", 3, "LAMP-ARC", 3),
                    "order 200 (3 LAMP-ARC, standard, placed 3 days ago) is backordered, no date known yet",
                ),
                Step(
                    "order-created",
                    order("201", 0.05, "LAMP-ARC", 3, customer_tier="VIP"),
                    "order 201 (3 LAMP-ARC, a VIP customer, placed an hour ago) is backordered",
                ),
                Step(
                    "restock-expected",
                    restock,
                    f"the buyer expects 6 LAMP-ARC in {RESTOCK_IN_DAYS} days (purchase order PO-7): "
                    "both customers are told an expected ship date",
                ),
                Step(
                    "inventory-received",
                    receipt("R4", "LAMP-ARC", 3),
                    "3 LAMP-ARC arrive early: the VIP order 201 ships although 200 is older; 200 keeps its date",
                ),
            ],
        ),
        Chapter(
            "4. Ship complete: units are held until the whole order can ship",
            [
                Step(
                    "order-created",
                    order("300", 2, "DESK-OAK", 4, split_preference="SHIP_COMPLETE"),
                    "order 300 (4 DESK-OAK) wants everything in one parcel, and is backordered",
                ),
                Step(
                    "inventory-received",
                    receipt("R5", "DESK-OAK", 2),
                    "2 DESK-OAK arrive: held for order 300, nothing ships yet",
                ),
                Step(
                    "inventory-received",
                    receipt("R6", "DESK-OAK", 2),
                    "2 more arrive: order 300 is complete and ships all 4",
                ),
            ],
        ),
        Chapter(
            "5. A cancellation releases its units to the next in line",
            [
                Step(
                    "order-created",
                    order("400", 2, "CHAIR-MESH", 5, split_preference="SHIP_COMPLETE"),
                    "order 400 (5 CHAIR-MESH, ship complete) is backordered",
                ),
                Step(
                    "order-created",
                    order("401", 1, "CHAIR-MESH", 3),
                    "order 401 (3 CHAIR-MESH) is backordered behind it",
                ),
                Step(
                    "inventory-received",
                    receipt("R7", "CHAIR-MESH", 3),
                    "3 CHAIR-MESH arrive: held for order 400, first in line; 401 still waits",
                ),
                Step(
                    "order-cancelled",
                    cancellation,
                    "the customer cancels order 400: its 3 units go to order 401 at once, which ships",
                ),
            ],
        ),
    ]


def describe(topic: str, event: Mapping[str, Any]) -> str:
    """One line a person can read for an outbound event (fields added by later contract versions shown if set)."""
    order = event.get("order_id", "")
    if topic == "fulfillment-requested":
        lines = ", ".join(f"{ln['quantity']} {ln['sku']}" for ln in event.get("lines", []))
        partial = " (partial: the rest is still backordered)" if event.get("partial") else ""
        return f"to shipping:  ship order {order}: {lines}{partial}"
    if topic == "customer-notification":
        parts = [str(event.get("type"))]
        if event.get("expected_ship_date"):
            parts.append(f"expected ship date {event['expected_ship_date']}")
        if event.get("reason"):
            parts.append(str(event["reason"]))
        return f"to customer:  order {order}: {'; '.join(parts)}"
    figures = [f"{event.get('quantity_allocated', 0)} allocated"]
    if event.get("quantity_reserved"):
        figures.append(f"{event['quantity_reserved']} held")
    figures.append(f"{event.get('quantity_backordered', 0)} backordered of {event.get('quantity_ordered', 0)}")
    why = f" ({event['reason']})" if event.get("reason") else ""
    return f"to the OMS:   order {order} line {event.get('line_id')}: {event.get('status')}, {', '.join(figures)}{why}"


class Watcher:
    """Reads what the worker publishes from the moment the demo starts, and prints it step by step."""

    def __init__(self, bootstrap: str, topics: dict[str, str], run: str, codec: AvroCodec) -> None:
        self._kinds = {name: kind for kind, name in topics.items()}
        self._run = run
        self._codec = codec
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"demo-watcher-{run}", "enable.auto.commit": False}
        )
        assignment = []
        for name in topics.values():
            for partition in self._consumer.list_topics(name, timeout=10).topics[name].partitions:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=10)
                assignment.append(TopicPartition(name, partition, high))
        self._consumer.assign(assignment)

    def show(self, *, first_within_s: float = 15.0, quiet_s: float = 1.0) -> None:
        """Collect what arrives until `quiet_s` passed without anything after a first event (or `first_within_s`
        without any), then print it order by order: shipment, line status, e-mail."""
        seen: list[tuple[str, Mapping[str, Any]]] = []
        deadline = time.monotonic() + first_within_s
        while time.monotonic() < deadline:
            msg = self._consumer.poll(0.1)
            if msg is None or msg.error() is not None:
                continue
            _, event = self._codec.decode(msg.value())
            if str(event.get("order_id", "")).startswith(self._run):  # a shared stack may carry others' events
                seen.append((self._kinds[msg.topic() or ""], event))
                deadline = time.monotonic() + quiet_s
        rank = list(OUTBOUND)
        for kind, event in sorted(seen, key=lambda seen: (str(seen[1].get("order_id")), rank.index(seen[0]))):
            print(f"        {describe(kind, event)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._consumer.close()


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


def play(env: dict[str, str], run: str, stopping: Callable[[], bool]) -> None:
    codec = AvroCodec.from_directory()
    producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
    outbound = {kind: env.get(variable, kind) for kind, variable in OUTBOUND.items()}
    watcher = Watcher(env["KAFKA_BOOTSTRAP_SERVERS"], outbound, run, codec)
    try:
        for chapter in scenario(run, dt.datetime.now(dt.UTC)):
            heading(chapter.title)
            for step in chapter.steps:
                if stopping():
                    return
                variable, record = INBOUND[step.topic]
                key = step.fields.get("order_id") or step.fields["sku"]
                value = codec.encode(f"backorder.{record}", step.fields)
                producer.produce(env.get(variable, step.topic), key=key.encode(), value=value)
                producer.flush(30)
                say(step.story)
                if step.answered:
                    watcher.show()
                else:
                    time.sleep(1.5)  # nothing to wait for: give the worker time to take it in before what follows
    finally:
        watcher.close()


def cli_command(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={**env, "BACKORDER_LOG_LEVEL": "WARNING"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout + done.stderr


def epilogue(env: dict[str, str], port: int, run: str, database_given: bool) -> None:
    heading("The tracking view: backorder-worker report")
    print(cli_command(env, "report").rstrip(), file=sys.stderr, flush=True)
    heading(f"From http://127.0.0.1:{port}/metrics")
    shown = [line for line in metrics_text(port).splitlines() if line.startswith(SHOWN_METRICS)]
    print("  " + "\n  ".join(shown), file=sys.stderr, flush=True)
    heading("Where to look")
    commands = [
        ("report", "the view above, again"),
        ("queue --sku LAMP-ARC", "who waits for an SKU, in allocation order, and why"),
        (f"decisions --order {run}-201", "every allocation of an order, with its reason"),
        ("decisions --sku CHAIR-MESH", "or of an SKU"),
        ("simulate --sku LAMP-ARC --receive 3", "what a receipt would do, changing nothing"),
    ]
    width = max(len(command) for command, _ in commands)
    print(
        "\n".join(
            [
                f"  metrics: http://127.0.0.1:{port}/metrics (health: /healthz)",
                f"  Kafka:   {env['KAFKA_BOOTSTRAP_SERVERS']}",
                "  the operators' commands, in another terminal while this runs:",
                "    (with the DATABASE_URL you set)"
                if database_given
                else f"    export DATABASE_URL={env['DATABASE_URL']}",
                *(f"    .venv/bin/backorder-worker {command:<{width}}  # {what}" for command, what in commands),
            ]
        ),
        file=sys.stderr,
        flush=True,
    )


def main() -> int:
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    database_given = "DATABASE_URL" in os.environ
    with localstack.local_stack() as endpoints:
        env = {**os.environ, **endpoints.environ()}
        env.setdefault("BACKORDER_METRICS_PORT", "9108")
        env.setdefault("BACKORDER_STATE_REFRESH_SECONDS", "2")  # a tiny database: /metrics can follow the story
        port = int(env["BACKORDER_METRICS_PORT"])
        say(f"Kafka at {endpoints.kafka_bootstrap_servers}")
        localstack.prepare_worker(env)
        # At DEBUG, so that each order's steps show in its log (`backordered`, `allocated`, `shipped`).
        worker_env = {**env, "BACKORDER_LOG_LEVEL": os.environ.get("BACKORDER_LOG_LEVEL", "DEBUG")}
        # Its own session: Ctrl-C reaches only this script, which stops the worker and then the stack in order.
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], env=worker_env, cwd=ROOT, start_new_session=True
        )
        try:
            wait_metrics(port, worker)
            say(f"worker running; metrics at http://127.0.0.1:{port}/metrics")
            run = f"demo-{uuid.uuid4().hex[:4]}"
            if not stopping:
                play(env, run, lambda: stopping)
            if not stopping:
                epilogue(env, port, run, database_given)
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
