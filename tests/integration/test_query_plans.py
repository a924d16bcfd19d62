"""Queries on the write path stay cheap as history grows: they use their indexes under a generic plan."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.integration.conftest import Deployment
from worker.adapters.postgres.unit_of_work import PostgresStore

CLOSED = 30_000


def history(conn: psycopg.Connection[Any]) -> None:
    """Many lines long since allocated, and one SKU with a few waiting."""
    conn.execute(
        """INSERT INTO customer_order (order_id, customer_id, customer_tier, shipping_service, currency, placed_at,
               event_id, order_units)
           SELECT 'O-' || i, 'C', 'STANDARD', 'STANDARD', 'USD', now(), 'e' || i, 1 FROM generate_series(1, %s) i""",
        (CLOSED + 5,),
    )
    conn.execute(
        """INSERT INTO order_line (order_id, line_id, sku, product_name, quantity, unit_price_minor,
               quantity_allocated, status, placed_at, updated_at)
           SELECT 'O-' || i, 'L1', CASE WHEN i > %s THEN 'WAITING-SKU' ELSE 'SKU-' || (i %% 50) END, 'P', 1, 1,
                  CASE WHEN i > %s THEN 0 ELSE 1 END, CASE WHEN i > %s THEN 'BACKORDERED' ELSE 'ALLOCATED' END,
                  now(), now()
           FROM generate_series(1, %s) i""",
        (CLOSED, CLOSED, CLOSED, CLOSED + 5),
    )
    conn.execute("ANALYZE order_line")
    conn.execute("ANALYZE customer_order")


def generic_plans(conn: psycopg.Connection[Any], fragment: str) -> list[str]:
    """The generic plans of this session's prepared statements whose text contains `fragment`."""
    plans = []
    for name, statement, types in conn.execute(
        "SELECT name, statement, parameter_types::text[] FROM pg_prepared_statements WHERE statement LIKE %s",
        (f"%{fragment}%",),
    ).fetchall():
        args = ", ".join(f"NULL::{t}" for t in types)
        rows = conn.execute(f"EXPLAIN EXECUTE {name}({args})").fetchall()
        plans.append("\n".join(row[0] for row in rows) + f"\n-- {statement}")
    return plans


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_the_queue_of_a_sku_is_read_through_the_partial_index(deployment: Deployment) -> None:
    with psycopg.connect(deployment.database_url, autocommit=True, prepare_threshold=0) as conn:
        history(conn)
        conn.execute("SET plan_cache_mode = force_generic_plan")  # what a long-lived connection ends up with
        store = PostgresStore(conn, lambda event: ("t", b"", b""), "dlq")
        assert len(store.queues(["WAITING-SKU"])["WAITING-SKU"]) == 5
        plans = generic_plans(conn, "FROM order_line")
        assert len(plans) == 1
        assert "order_line_waiting" in plans[0], plans[0]


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_whether_a_queue_has_dates_is_one_probe_however_long_it_is(deployment: Deployment) -> None:
    """A queue of 20,000 lines with no expected date: the question is answered without walking it."""
    with psycopg.connect(deployment.database_url, autocommit=True, prepare_threshold=0) as conn:
        history(conn)
        conn.execute(
            """UPDATE order_line SET status = 'BACKORDERED', quantity_allocated = 0
               WHERE order_id IN (SELECT 'O-' || i FROM generate_series(1, 20000) i)"""
        )
        conn.execute("UPDATE order_line SET expected_ship_date = current_date WHERE order_id = 'O-30001'")
        conn.execute("ANALYZE order_line")
        conn.execute("SET plan_cache_mode = force_generic_plan")
        store = PostgresStore(conn, lambda event: ("t", b"", b""), "dlq")
        assert store.skus_with_expected_dates(["SKU-7", "WAITING-SKU"]) == {"WAITING-SKU"}
        [plan] = generic_plans(conn, "expected_ship_date IS NOT NULL")
        assert "order_line_dated" in plan, plan
