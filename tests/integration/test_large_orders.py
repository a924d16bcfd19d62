"""Orders at the line bound: a batch of them is applied in bounded transactions and the worker stays live."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

from tests import factories
from tests.integration.conftest import Deployment, WorkerProcess, json_lines, wait_for

ORDERS = 120
LINES = 500  # the documented bound of lines per order
SKUS = 50
LIVENESS_S = 1.5


def healthz(worker: WorkerProcess) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/healthz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_a_batch_of_the_largest_orders_keeps_the_worker_live(deployment: Deployment) -> None:
    for i in range(ORDERS):
        lines = [
            {
                "line_id": f"L{n}",
                "sku": f"BIG-{(i + n) % SKUS}",
                "product_name": "Bolt",
                "quantity": 1,
                "unit_price_minor": 10,
            }
            for n in range(LINES)
        ]
        deployment.produce("order-created", factories.order(f"O-{i:03d}", "2026-01-01", lines), key="one")
    # The batch (60,000 lines: 3-4 s here; 20,000 took 1.2 s) outlasts the liveness bound; a transaction of 500
    # lines does not.
    worker = deployment.start_worker(
        BACKORDER_TRANSACTION_MAX_LINES="500",
        BACKORDER_LIVENESS_SECONDS=str(LIVENESS_S),
        BACKORDER_BATCH_TIMEOUT_SECONDS="0.2",
    )

    started = time.monotonic()
    answers: list[int] = []
    deadline = started + 300
    while time.monotonic() < deadline:
        answers.append(healthz(worker))
        if deployment.query("SELECT count(*) FROM customer_order")[0][0] == ORDERS:
            break
        time.sleep(0.25)
    took = time.monotonic() - started

    def logged() -> list[dict[str, Any]]:  # a batch is logged once its last transaction has committed
        return [e for e in json_lines(worker.log()) if e.get("event") == "batch_handled"]

    batches = wait_for("the batch to be logged", logged, timeout_s=30)
    longest = max(e["seconds"] for e in batches)
    print(f"\n{ORDERS} orders of {LINES} lines: {took:.1f}s, longest batch {longest:.1f}s, {len(answers)} probes")
    assert deployment.query("SELECT count(*) FROM order_line")[0][0] == ORDERS * LINES
    assert longest > LIVENESS_S, "the batch must outlast the liveness bound for this test to show anything"
    assert set(answers) == {200}, f"/healthz answered {sorted(set(answers))} while the batch was handled"
    wait_for("the worker to stay up", lambda: worker.proc.poll() is None)
