"""Two workers in one group share SKUs across partitions; one is killed midway. Stock is never over-allocated.

The group uses the KIP-848 protocol (the broker's range assignment), which the workers choose by default (`auto`)
on this broker: each worker gets a share of every topic. The classic protocol's cooperative rebalances are
measured by test_rebalance_recovery."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from tests import factories
from tests.integration.conftest import RECORD_OF, Deployment, wait_for

SKUS = ["SKU-A", "SKU-B", "SKU-C", "SKU-D"]
ORDERS = 80
RECEIPTS = 24
PARTITIONS = 4
INBOUND_TOPICS = len(RECORD_OF)  # the inbound kinds, each with its record


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

    # The protocol is the default's choice (`auto`), the test deployment's classic session options left out; the
    # session is set as the group's on the broker (librdkafka refuses it as a client option with KIP-848).
    group = {
        "BACKORDER_BATCH_SIZE": "7",
        "BACKORDER_KAFKA_CONSUMER_CONFIG": "{}",
        "BACKORDER_SESSION_TIMEOUT_SECONDS": "6",
        "BACKORDER_HEARTBEAT_INTERVAL_SECONDS": "1",
    }
    first = deployment.start_worker(**group)
    second = deployment.start_worker(**group)
    wait_for(
        "the two workers to hold every inbound partition, half each",
        lambda: (
            len(first.assignment()) == len(second.assignment()) == INBOUND_TOPICS * PARTITIONS // 2
            and len(set(first.assignment()) | set(second.assignment())) == INBOUND_TOPICS * PARTITIONS
        ),
    )
    for worker in (first, second):  # KIP-848, chosen because this broker runs it and took the session
        [chosen] = worker.logged("group_protocol_chosen")
        assert chosen["protocol"] == "consumer", chosen
        assert worker.metric("backorder_group_info", protocol="consumer") == 1
    for worker in (first, second):  # a share of each topic, the orders' and the receipts' among them
        held = Counter(p.rsplit("[", 1)[0] for p in worker.assignment())
        assert held == {deployment.topics[kind]: PARTITIONS // 2 for kind in RECORD_OF}, held
    admin = AdminClient({"bootstrap.servers": deployment.bootstrap})
    [described] = admin.describe_configs([ConfigResource(ResourceType.GROUP, deployment.group_id)]).values()
    configs = described.result()
    assert (configs["consumer.session.timeout.ms"].value, configs["consumer.heartbeat.interval.ms"].value) == (
        "6000",
        "1000",
    )
    for kind, record in events[: len(events) // 2]:
        deployment.produce(kind, record)
    busy = wait_for(
        "a worker to have handled something",
        lambda: next((w for w in (first, second) if w.metric("backorder_events_consumed_total") > 0), None),
    )
    busy.kill()
    deployment.start_worker(**group)
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
