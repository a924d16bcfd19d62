"""A database that goes away is not bad input: the worker waits, retries, dead-letters nothing, then catches up."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import localstack
import pytest

from tests import factories
from tests.integration.conftest import Deployment, wait_for
from worker.adapters.avro import AvroCodec

SKU = "OUTAGE-SKU"


@pytest.fixture
def own_postgres() -> Iterator[localstack.PostgresServer]:
    """A PostgreSQL server this test may stop and start; in /tmp, where the server's user can reach it."""
    with tempfile.TemporaryDirectory(prefix="backorder-stack-") as workdir:
        server = localstack.PostgresServer(Path(workdir) / "postgres")
        server.start()
        yield server
        server.stop()


def test_worker_retries_through_a_database_outage(
    stack: localstack.Endpoints, codec: AvroCodec, own_postgres: localstack.PostgresServer, tmp_path: Path
) -> None:
    world = Deployment(localstack.Endpoints(stack.kafka_bootstrap_servers, own_postgres.url), codec, tmp_path, 3)
    try:
        worker = world.start_worker()
        world.produce("order-created", factories.order("O-1", "2026-04-01", [(SKU, 3)]))
        world.produce("order-created", factories.order("O-2", "2026-04-02", [(SKU, 3)]))
        wait_for("the orders", lambda: worker.metric("backorder_events_consumed_total") == 2)

        own_postgres.stop()
        world.produce("inventory-received", factories.receipt("R-1", SKU, 4))
        world.produce("order-created", factories.order("O-3", "2026-04-03", [(SKU, 1)]))
        # An attempt waits up to 10 s for a connection (the pool's timeout): one that failed, and the worker is
        # still there, is enough; the catching up below is the attempt after it.
        wait_for("a failed attempt", lambda: worker.log().count('"database_unavailable"') >= 1)
        assert worker.metric("backorder_database_retries_total") >= 1
        assert worker.metric("backorder_events_consumed_total") == 2
        assert worker.proc.poll() is None

        own_postgres.start()
        shipped = {
            m.value["order_id"]: m.value["lines"][0]["quantity"]
            for m in world.read("fulfillment-requested", count=2)
            if m.value
        }
        assert shipped == {"O-1": 3, "O-2": 1}
        wait_for("all four events", lambda: worker.metric("backorder_events_consumed_total", outcome="processed") == 4)
        assert world.read("dlq", settle_s=1.0) == []
        assert worker.terminate() == 0
    finally:
        world.close()
