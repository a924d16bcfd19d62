"""SIGTERM with the broker unreachable: the worker exits within BACKORDER_SHUTDOWN_TIMEOUT_SECONDS, losing nothing."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import localstack
import pytest

from tests import factories
from tests.integration.conftest import Deployment, wait_for
from worker.adapters.avro import AvroCodec

BOUND_S = 10.0


@pytest.fixture
def own_broker() -> Iterator[localstack.KafkaBroker]:
    """A Kafka broker this test may stop."""
    with tempfile.TemporaryDirectory(prefix="backorder-kafka-") as workdir:
        broker = localstack.KafkaBroker(Path(workdir) / "kafka", heap="512m")
        broker.start()
        yield broker
        broker.thaw()
        broker.stop()


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_sigterm_with_the_broker_down_exits_within_the_bound(
    stack: localstack.Endpoints, codec: AvroCodec, own_broker: localstack.KafkaBroker, tmp_path: Path, outage: str
) -> None:
    """`stopped`: connections refused; `frozen` (SIGSTOP): connections open, nothing answers, as in a partition."""
    world = Deployment(localstack.Endpoints(own_broker.bootstrap_servers, stack.database_url), codec, tmp_path, 3)
    try:
        worker = world.start_worker(BACKORDER_SHUTDOWN_TIMEOUT_SECONDS=str(BOUND_S))
        world.produce("order-created", factories.order("SD-1", "2026-04-01", [("SD-SKU", 3)]))
        wait_for("the order", lambda: worker.metric("backorder_events_consumed_total") == 1)

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
        assert world.query("SELECT order_id FROM customer_order") == [("SD-1",)]  # what was committed stays
    finally:
        world.close()
