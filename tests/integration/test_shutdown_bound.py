"""SIGTERM with the broker unreachable: the worker exits within BACKORDER_SHUTDOWN_TIMEOUT_SECONDS, losing nothing."""

from __future__ import annotations

import time
from pathlib import Path

import localstack
import pytest

from tests import factories
from tests.integration.conftest import UNPUBLISHED, Deployment, wait_for
from worker.adapters.avro import AvroCodec

BOUND_S = 5.0


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_sigterm_with_the_broker_down_exits_within_the_bound(
    stack: localstack.Endpoints, codec: AvroCodec, own_broker: localstack.KafkaBroker, tmp_path: Path, outage: str
) -> None:
    """`stopped`: connections refused; `frozen` (SIGSTOP): connections open, nothing answers, as in a partition.

    The second order is consumed just before the outage and its offset may not be committed (the broker is
    down at shutdown, and the background commit is made rare): after the broker is back, a new worker
    consumes again what was not committed, and the order is recorded once and announced once."""
    world = Deployment(localstack.Endpoints(own_broker.bootstrap_servers, stack.database_url), codec, tmp_path, 3)
    rare_commits = '{"session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "auto.commit.interval.ms": 600000}'
    try:
        worker = world.start_worker(
            BACKORDER_SHUTDOWN_TIMEOUT_SECONDS=str(BOUND_S), BACKORDER_KAFKA_CONSUMER_CONFIG=rare_commits
        )
        world.produce("order-created", factories.order("SD-1", "2026-04-01", [("SD-SKU", 3)]))
        wait_for("the order", lambda: worker.metric("backorder_events_consumed_total") == 1)
        world.produce("order-created", factories.order("SD-2", "2026-04-01", [("SD-SKU", 2)]))
        wait_for("the second order", lambda: worker.metric("backorder_events_consumed_total") == 2)
        # Its events are written with it, and the relay deletes them once Kafka has them.
        recorded = "SELECT 1 FROM customer_order WHERE order_id = 'SD-2'"
        wait_for("its events published", lambda: world.query(recorded) and world.query(UNPUBLISHED) == [(0,)])

        if outage == "stopped":
            own_broker.stop()
            wait_for("the worker to notice", lambda: '"kafka_client_error"' in worker.log(), timeout_s=30)
        else:
            own_broker.freeze()
            time.sleep(2.0)
        started = time.monotonic()
        code = worker.terminate(timeout_s=BOUND_S + 60)  # SIGTERM, then wait
        took = time.monotonic() - started
        print(f"\nSIGTERM with the broker {outage}: exited {code} after {took:.1f}s (bound {BOUND_S:.0f}s)")
        assert took <= BOUND_S + 3.0  # the bound, plus the interpreter's own exit
        assert code == 0
        assert world.query("SELECT order_id FROM customer_order ORDER BY 1") == [("SD-1",), ("SD-2",)]

        # The broker comes back; a new worker consumes again what was not committed.
        if outage == "stopped":
            own_broker.start()
        else:
            own_broker.thaw()
        again = world.start_worker(BACKORDER_KAFKA_CONSUMER_CONFIG=rare_commits)
        # Behind SD-2 on its partition: once it is recorded, SD-2 was consumed again (or committed before).
        world.produce("order-created", factories.order("SD-3", "2026-04-01", [("SD-SKU", 1)]), key="SD-2")
        wait_for("the third order", lambda: world.query("SELECT 1 FROM customer_order WHERE order_id = 'SD-3'"))
        wait_for("the outbox empty", lambda: world.query(UNPUBLISHED) == [(0,)])
        consumed_again = again.metric("backorder_events_consumed_total")
        print(f"consumed again after the restart: {consumed_again:.0f} events (SD-3 included)")
        if outage == "stopped":  # a frozen broker may still apply the commit it received before SIGSTOP
            assert consumed_again >= 2  # SD-2's offset was not committed: it was consumed twice in all

        assert world.query("SELECT order_id, count(*) FROM order_line WHERE order_id = 'SD-2' GROUP BY 1") == [
            ("SD-2", 1)
        ]
        confirmations = [
            m
            for m in world.read("customer-notification", settle_s=3.0)
            if m.value is not None and m.value["order_id"] == "SD-2"
        ]
        print(f"SD-2 notifications published: {[m.value['type'] for m in confirmations if m.value]}")
        assert [m.value["type"] for m in confirmations if m.value] == ["BACKORDER_CONFIRMED"]
        again.terminate()
    finally:
        world.close()
