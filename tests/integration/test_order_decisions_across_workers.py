"""Two workers fill the two lines of the same orders from two SKUs at the same moment.

What is decided about an order from its other lines (`partial`, `cancel_allowed`, an order-scope
ship-complete hold) must see what the other worker did: the second transaction waits for the first.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from tests import factories
from tests.integration.conftest import RECORD_OF, Deployment, wait_for

ORDERS = 400
PARTITIONS = 4


def owners(deployment: Deployment, topic: str) -> dict[int, str]:
    """Partition -> the member of the worker group that holds it, as the group coordinator says."""
    admin = AdminClient({"bootstrap.servers": deployment.bootstrap})
    [future] = admin.describe_consumer_groups([deployment.group_id]).values()
    group = future.result(timeout=10)
    return {
        tp.partition: member.member_id
        for member in group.members
        for tp in member.assignment.topic_partitions
        if tp.topic == topic
    }


def fill_both_skus_at_once(deployment: Deployment, split: str | None, **settings: str) -> None:
    quick = {
        "BACKORDER_BATCH_TIMEOUT_SECONDS": "0.05",
        "BACKORDER_SWEEP_INTERVAL_SECONDS": "0",
        # The range assignor splits every topic between the two workers, so each holds receipt partitions.
        "BACKORDER_KAFKA_CONSUMER_CONFIG": '{"session.timeout.ms": 6000, "heartbeat.interval.ms": 500, '
        '"partition.assignment.strategy": "range"}',
    }
    for _ in range(2):
        deployment.start_worker(**quick, **settings)
    receipts = deployment.topics["inventory-received"]
    seen: list[dict[int, str]] = []  # the last assignment is shown if the wait fails

    def one_partition_each() -> dict[int, str] | None:
        seen.append(owners(deployment, receipts))
        return seen[-1] if len(seen[-1]) == PARTITIONS and len(set(seen[-1].values())) == 2 else None

    try:
        held = wait_for(f"both workers to hold partitions of {receipts}", one_partition_each, timeout_s=120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last assignment {seen[-1:]}") from None
    first, second = sorted(set(held.values()))
    pair = [min(p for p, m in held.items() if m == first), min(p for p, m in held.items() if m == second)]
    for i in range(ORDERS):
        deployment.produce(
            "order-created",
            factories.order(f"O-{i:04d}", "2026-02-01", [("SKU-A", 1), ("SKU-B", 1)], split_preference=split),
        )
    wait_for(
        "every order to wait",
        lambda: deployment.query("SELECT count(*) FROM customer_order")[0][0] == ORDERS,
        timeout_s=120,
    )
    # The receipts of A and B go to partitions that different workers hold, in one flush.
    producer = Producer({"bootstrap.servers": deployment.bootstrap, "linger.ms": 0})
    for partition, sku in zip(pair, ["SKU-A", "SKU-B"], strict=True):
        value = deployment.codec.encode(RECORD_OF["inventory-received"], factories.receipt(f"R-{sku}", sku, ORDERS))
        producer.produce(receipts, key=sku.encode(), value=value, partition=partition)
    assert producer.flush(30) == 0
    wait_for(
        "every line to be given its unit",
        lambda: (
            deployment.query("SELECT count(*) FROM order_line WHERE quantity_allocated + quantity_reserved = 1")[0][0]
            == 2 * ORDERS
        ),
        timeout_s=120,
    )
    wait_for(
        "the outbox to drain",
        lambda: deployment.query("SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0] == 0,
    )


def by_order(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        out[record["order_id"]].append(record)
    return out


@pytest.mark.parametrize("deployment", [PARTITIONS], indirect=True)
def test_the_second_fill_of_an_order_knows_the_first(deployment: Deployment) -> None:
    fill_both_skus_at_once(deployment, split=None)

    shipments = by_order([m.value for m in deployment.read("fulfillment-requested", count=2 * ORDERS) if m.value])
    assert len(shipments) == ORDERS
    wrong = [o for o, fills in shipments.items() if sorted(f["partial"] for f in fills) != [False, True]]
    assert wrong == [], f"{len(wrong)} orders whose two shipments do not say partial, then complete"

    allocated = by_order(
        [
            m.value
            for m in deployment.read("customer-notification", settle_s=3.0)
            if m.value and m.value["type"] == "BACKORDER_ALLOCATED"
        ]
    )
    wrong = [o for o, notes in allocated.items() if sorted(n["cancel_allowed"] for n in notes) != [False, True]]
    assert len(allocated) == ORDERS and wrong == [], f"{len(wrong)} orders told they can still cancel when complete"


@pytest.mark.parametrize("deployment", [PARTITIONS], indirect=True)
def test_an_order_held_for_ship_complete_ships_once_both_lines_are_in(deployment: Deployment) -> None:
    fill_both_skus_at_once(deployment, split="SHIP_COMPLETE", BACKORDER_SHIP_COMPLETE_SCOPE="order")

    wait_for(
        "every order to ship",
        lambda: deployment.query("SELECT count(*) FROM order_line WHERE quantity_allocated = 1")[0][0] == 2 * ORDERS,
        timeout_s=30,
    )
    assert deployment.query("SELECT coalesce(sum(quantity_reserved), 0) FROM order_line") == [(0,)]
    shipments = by_order([m.value for m in deployment.read("fulfillment-requested", count=ORDERS) if m.value])
    assert len(shipments) == ORDERS
    for fills in shipments.values():
        assert len(fills) == 1 and not fills[0]["partial"]
        assert sorted(line["sku"] for line in fills[0]["lines"]) == ["SKU-A", "SKU-B"]
