"""What operators see: the rules pass promtool, a real Prometheus reads the figures a known scenario implies,
`report` prints them, and the health endpoints answer."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import localstack
import pytest

from tests import factories
from tests.integration.conftest import ROOT, Deployment, wait_for

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"


@pytest.mark.parametrize("args", [["check", "rules", "rules.yml"], ["test", "rules", "tests.yml"]])
def test_the_alerting_rules_pass_promtool(args: list[str]) -> None:
    done = subprocess.run(
        [str(localstack.prometheus_bindir() / "promtool"), *args],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.fixture
def prometheus_for(deployment: Deployment) -> Iterator[localstack.PrometheusServer]:
    worker = deployment.start_worker()
    with tempfile.TemporaryDirectory(prefix="backorder-prometheus-") as workdir:
        server = localstack.PrometheusServer(Path(workdir), [f"127.0.0.1:{worker.metrics_port}"], [RULES])
        server.start()
        yield server
        server.stop()


def query(server: localstack.PrometheusServer, promql: str) -> float | None:
    url = f"{server.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_reads_the_rates_and_the_backlog_of_a_known_scenario(
    deployment: Deployment, prometheus_for: localstack.PrometheusServer
) -> None:
    prom = prometheus_for
    # Prometheus sees every counter at zero before anything happens, as in production.
    wait_for(
        "the first scrapes",
        lambda: (query(prom, 'count_over_time(backorder_orders_total{outcome="REJECTED"}[1m])') or 0) >= 2,
    )

    deployment.produce("product-policy", factories.policy("GONE", discontinued=True))
    deployment.produce("inventory-received", factories.receipt("R-1", "ON-HAND", 10))
    wait_for(
        "policy and stock",
        lambda: (
            deployment.query("SELECT (SELECT count(*) FROM product_policy), (SELECT count(*) FROM stock_receipt)")[0]
            == (1, 1)
        ),
    )
    deployment.produce("order-created", factories.order("in-stock", "2026-01-05", [("ON-HAND", 2)]))
    deployment.produce("order-created", factories.order("waits", "2026-01-05", [("LATER", 5)]))  # 5 x 25.00 USD
    deployment.produce("order-created", factories.order("cancels", "2026-01-06", [("LATER", 3)]))
    deployment.produce("order-created", factories.order("refused", "2026-01-07", [("GONE", 1)]))
    deployment.read("customer-notification", count=3)
    deployment.produce("order-cancelled", factories.cancellation("cancels"))
    deployment.read("customer-notification", count=4)

    # Four orders, two backordered: 50%. Two backordered lines, one cancelled: 50%. Five units wait, worth 125.00.
    def settled() -> bool:
        return (
            query(prom, "max(backorder_open_units)") == 5
            and query(prom, "sum(max without (instance) (backorder_cancelled_lines_total))") == 1
            and query(prom, "backorder:cancel_rate:ratio7d") is not None
            and query(prom, "backorder:backorder_rate:ratio1d") is not None
        )

    wait_for("Prometheus to see the scenario", settled, timeout_s=60, every_s=1.0)
    wait_for(
        "a rule evaluation after the last scrape",
        lambda: query(prom, "backorder:cancel_rate:ratio7d") == 0.5,
        timeout_s=20,
        every_s=1.0,
    )
    assert query(prom, "backorder:backorder_rate:ratio1d") == pytest.approx(0.5)
    assert query(prom, "backorder:cancel_rate:ratio7d") == pytest.approx(0.5)
    assert query(prom, 'max(backorder_open_value_minor{currency="USD"})') == 12500
    assert query(prom, "max(backorder_open_orders)") == 1
    assert query(prom, 'sum(backorder_events_consumed_total{outcome="processed"})') == 7
    assert (query(prom, "sum(backorder_end_to_end_latency_seconds_count)") or 0) > 0

    report = deployment.cli("report")
    assert "current backorders: 1 orders, 1 lines, 5 units" in report
    assert "total value: 125.00 USD" in report
    assert "backorder rate: 50.0% of 4 orders (target < 5%)" in report
    assert "cancel rate: 50.0% of 2 backordered lines (target < 20%)" in report
    assert "LATER" in report.split("\n\n", 1)[1]


def test_health_and_readiness_endpoints(deployment: Deployment) -> None:
    worker = deployment.start_worker()

    def status(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    assert status("/healthz")[0] == 200
    wait_for("partitions", lambda: status("/readyz")[0] == 200)
    assert "partitions assigned" in status("/readyz")[1]
    metrics = status("/metrics")[1]
    documented = re.findall(r"^\| `(backorder_[a-z0-9_]+)` \|", (ROOT / "README.md").read_text(), re.MULTILINE)
    assert len(documented) > 20
    for name in documented:  # every metric the README promises is served (TYPE lines come even before samples)
        assert f"# TYPE {name} " in metrics, name


def test_scrapes_serve_the_last_refresh_and_never_query_the_database(deployment: Deployment) -> None:
    worker = deployment.start_worker(BACKORDER_STATE_REFRESH_SECONDS="3600")  # read once, at start
    assert worker.metric("backorder_state_query_ok") == 1
    assert worker.metric("backorder_open_lines") == 0
    deployment.add_waiting_line("RICH", "GOLD", 2, 2**63 - 1)  # a waiting line the next refresh would count

    for _ in range(8):
        assert worker.metric("backorder_open_lines") == 0  # the figures of the last refresh, not a new query
    assert worker.metric("backorder_state_age_seconds") > 0
    names = deployment.query("SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")
    assert ("backorder-worker-state",) in names  # the refresher's own connection, outside the pool


def test_an_amount_beyond_bigint_keeps_every_database_series(deployment: Deployment) -> None:
    deployment.add_waiting_line("RICH", "GOLD", 2, 2**63 - 1)
    worker = deployment.start_worker()

    assert worker.metric("backorder_state_query_ok") == 1
    assert worker.metric("backorder_open_value_minor", currency="USD") == pytest.approx(2 * (2**63 - 1))
    assert worker.metric("backorder_open_lines") == 1


def test_the_running_totals_start_from_what_the_lines_held_before_them(deployment: Deployment) -> None:
    """Migration 0007 counts the lines written before it: on a database with history, what it starts the
    totals from equals the figures counted over every line."""
    for n, quantity in enumerate((3, 5, 7, 2)):
        deployment.add_waiting_line(f"OLD-{n}", "HIST", quantity, 100)
    with deployment.db() as conn:
        conn.execute(
            """UPDATE order_line SET backordered = true, quantity_allocated = 2, status = 'PARTIALLY_ALLOCATED',
                   filled_at = placed_at + interval '30 hours' WHERE order_id = 'OLD-0'"""
        )
        conn.execute(
            """UPDATE order_line SET backordered = true, quantity_allocated = 5, status = 'SHIPPED',
                   quantity_shipped = 5, filled_at = placed_at + interval '2 days',
                   shipped_at = placed_at + interval '3.5 days' WHERE order_id = 'OLD-1'"""
        )
        conn.execute(
            """UPDATE order_line SET quantity_cancelled = 7, status = 'CANCELLED', cancel_reason = 'STALE'
               WHERE order_id = 'OLD-2'"""
        )
        conn.execute("UPDATE order_line SET quantity_rejected = 2, status = 'REJECTED' WHERE order_id = 'OLD-3'")
        conn.execute("UPDATE customer_order SET outcome = 'FULLY_BACKORDERED' WHERE order_id IN ('OLD-0', 'OLD-1')")
        conn.execute("DELETE FROM state_total")
        conn.execute("DELETE FROM state_delta")
        migration = (ROOT / "worker" / "migrations" / "0007_running_totals.sql").read_text()
        for statement in migration.split(";"):
            if "INSERT INTO state_total" in statement:
                conn.execute(statement)
    kept, counted = deployment.totals_and_aggregates()
    assert kept == counted
    assert kept["units"] == (7, 0, 2) and kept["cancelled"] == {"STALE": 1} and kept["fills"][1].count == 1
