"""A SIGKILLed worker's partitions progress again within 15 s (classic protocol: cooperative-sticky, 10 s session)."""

from __future__ import annotations

import functools
import statistics
import threading
import time

import pytest
from confluent_kafka import Producer

from tests import factories
from tests.integration.conftest import RECORD_OF, Deployment, WorkerProcess, wait_for

PARTITIONS = 6
INBOUND_TOPICS = 6
KILLS = 3


def _all_assigned(workers: list[WorkerProcess]) -> bool:
    held = [set(w.assignment()) for w in workers]
    return (
        all(held)
        and len(set().union(*held)) == INBOUND_TOPICS * PARTITIONS
        and sum(map(len, held)) == len(set().union(*held))
    )


def _kill_and_measure(
    deployment: Deployment,
    topic: str,
    victim: WorkerProcess,
    survivor: WorkerProcess,
) -> float:
    """SIGKILL `victim`; seconds until each of its order-created partitions has a new order in the database."""
    orphaned = {int(p.split("[")[1].rstrip("]")) for p in victim.assignment() if p.startswith(f"{topic}[")}
    wait_for("orders to flow", lambda: deployment.query("SELECT count(*) FROM customer_order")[0][0] > 0)
    assert survivor.proc.poll() is None
    victim.kill()
    killed_at = time.monotonic()

    def handled() -> dict[int, int]:
        """Orders in the database per partition (order ids name their partition)."""
        rows = deployment.query("SELECT order_id FROM customer_order WHERE order_id LIKE 'RB-%%'")
        counts = dict.fromkeys(range(PARTITIONS), 0)
        for (order_id,) in rows:
            counts[int(order_id.rsplit("-P", 1)[1])] += 1
        return counts

    at_kill = handled()  # the victim is dead: whatever is added from now on, the survivor handled

    def progressed() -> bool:
        now = handled()
        return all(now[p] > at_kill[p] for p in orphaned)

    wait_for("the orphaned partitions to progress", progressed, timeout_s=90, every_s=0.1)
    recovery = time.monotonic() - killed_at
    print(f"\nSIGKILL: partitions {sorted(orphaned)} of {topic} progressed again after {recovery:.1f}s")
    return recovery


@pytest.mark.parametrize("deployment", [PARTITIONS], indirect=True)
def test_a_killed_workers_partitions_progress_again_within_15_s(deployment: Deployment) -> None:
    topic = deployment.topics["order-created"]
    # The worker's own membership settings, not the tests', with the classic protocol: what `auto` takes on a broker
    # without KIP-848 groups or with Kafka's default session bounds (the fault run's workers take KIP-848 here).
    defaults = {"BACKORDER_KAFKA_CONSUMER_CONFIG": "{}", "BACKORDER_GROUP_PROTOCOL": "classic"}
    workers = [deployment.start_worker(**defaults), deployment.start_worker(**defaults)]
    wait_for("both workers to share every partition", lambda: _all_assigned(workers), timeout_s=90)

    # Orders flow into every partition of order-created, ~30 a second, each naming its partition.
    producer = Producer({"bootstrap.servers": deployment.bootstrap, "linger.ms": 5})
    flowing = threading.Event()
    flowing.set()

    def produce() -> None:
        n = 0
        while flowing.is_set():
            for partition in range(PARTITIONS):
                order_id = f"RB-{n}-P{partition}"
                value = deployment.codec.encode(
                    RECORD_OF["order-created"], factories.order(order_id, "2026-05-01", [(f"RB-SKU-{partition}", 1)])
                )
                producer.produce(topic, key=order_id.encode(), value=value, partition=partition)
            producer.flush(10)
            n += 1
            time.sleep(0.2)

    feeder = threading.Thread(target=produce, daemon=True)
    feeder.start()
    recoveries: list[float] = []
    try:
        for _ in range(KILLS):
            victim = next(w for w in workers if any(p.startswith(f"{topic}[") for p in w.assignment()))
            survivor = next(w for w in workers if w is not victim)
            recoveries.append(_kill_and_measure(deployment, topic, victim, survivor))
            workers = [survivor, deployment.start_worker(**defaults)]
            wait_for("the group to settle", functools.partial(_all_assigned, list(workers)), timeout_s=90)
    finally:
        flowing.clear()
        feeder.join(15)
    median = statistics.median(recoveries)
    print(f"recovery after SIGKILL: {', '.join(f'{r:.1f}s' for r in recoveries)}; median {median:.1f}s")
    assert median <= 15.0
