"""Queries on the write path stay cheap as history grows: they use their indexes under a generic plan."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import Deployment
from worker.adapters.postgres import unit_of_work
from worker.adapters.postgres.unit_of_work import PostgresStore
from worker.service.ports import Changes, Fact, Wanted

CLOSED = 30_000


def history(conn: psycopg.Connection[Any]) -> None:
    """Many lines long since allocated, and one SKU with a few waiting."""
    conn.execute(
        """INSERT INTO customer_order (order_id, customer_id, customer_tier, shipping_service, currency, placed_at,
               event_id, order_units)
           SELECT 'O-' || i, 'C-' || (i %% 3000), 'STANDARD', 'STANDARD', 'USD', now(), 'e' || i, 1
           FROM generate_series(1, %s) i""",
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
        rows = conn.execute(f"EXPLAIN EXECUTE {name}({args})" if args else f"EXPLAIN EXECUTE {name}").fetchall()
        plans.append("\n".join(row[0] for row in rows) + f"\n-- {statement}")
    return plans


def order_line_scans(conn: psycopg.Connection[Any]) -> int:
    """Sequential scans of order_line by this transaction so far."""
    return int(one(conn, "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'order_line'"))


def one(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_the_queue_of_a_sku_is_planned_for_its_skus_at_every_call_and_read_through_the_partial_index(
    deployment: Deployment,
) -> None:
    """How many lines wait differs by orders of magnitude from SKU to SKU, and a plan made once and kept (a
    prepared statement's generic plan) outlives the statistics it was made with: the read is never prepared."""
    with psycopg.connect(deployment.database_url, autocommit=True, prepare_threshold=0) as conn:
        history(conn)
        store = PostgresStore(conn, lambda event: ("t", b"", b""), "dlq")
        with conn.transaction():
            for _ in range(10):
                assert len(store.queues(["WAITING-SKU"])["WAITING-SKU"]) == 5
            assert order_line_scans(conn) == 0
        assert generic_plans(conn, "l.sku = ANY") == []


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


LARGE = (
    "order_line",
    "customer_order",
    "expected_restock",
    "supplier_delivery",
    "allocation",
    "status_update",
    "inbound_fact",
)


def more_history(conn: psycopg.Connection[Any]) -> None:
    """History in every other table that grows with it: restocks, deliveries, allocations, status updates, facts."""
    conn.execute(
        """INSERT INTO expected_restock (purchase_order_id, sku, supplier_id, quantity, expected_date, decided_at,
               event_id)
           SELECT 'PO-' || i, 'SKU-' || (i %% 50), 'S-' || (i %% 20), 0, current_date, now(), 'r' || i
           FROM generate_series(1, %s) i""",
        (CLOSED,),
    )
    conn.execute(
        """INSERT INTO supplier_delivery (receipt_id, supplier_id, purchase_order_id, sku, expected_date,
               received_on, days_late)
           SELECT 'R-' || i, 'S-' || (i %% 20), 'PO-' || i, 'SKU-' || (i %% 50), current_date, current_date, 0
           FROM generate_series(1, %s) i""",
        (CLOSED,),
    )
    conn.execute(
        """INSERT INTO allocation (order_id, line_id, sku, quantity, shipment_id, cause, allocated_at)
           SELECT 'O-' || i, 'L1', 'SKU-' || (i %% 50), 1, gen_random_uuid(), 'c', now()
           FROM generate_series(1, %s) i""",
        (CLOSED,),
    )
    conn.execute(
        "INSERT INTO status_update (order_id, step) SELECT 'O-' || i, 1 FROM generate_series(1, %s) i", (CLOSED,)
    )
    conn.execute(
        """INSERT INTO inbound_fact (kind, natural_key, event_id, content_hash)
           SELECT 'order', 'O-' || i, 'e' || i, '\\x00' FROM generate_series(1, %s) i""",
        (CLOSED,),
    )
    for table in LARGE:
        conn.execute(f"ANALYZE {table}")


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_no_load_of_the_write_path_scans_a_table_that_grows_with_history(deployment: Deployment) -> None:
    """Every statement a batch loads with, under a generic plan, reaches the tables that grow with history
    through an index."""
    with psycopg.connect(deployment.database_url, autocommit=True, prepare_threshold=0) as conn:
        history(conn)
        more_history(conn)
        conn.execute("SET plan_cache_mode = force_generic_plan")
        store = PostgresStore(conn, lambda event: ("t", b"", b""), "dlq")
        with conn.transaction():
            store.lock_orders(["O-30001", "NEW-1"])
            store.lock_stock(["WAITING-SKU", "SKU-7"])
            store.skus_of_orders(["O-30001"])
            store.stock(["WAITING-SKU"])
            store.queue_versions(["WAITING-SKU"])
            store.hold_orders(["O-30001"])
            store.claim_facts([Fact("order", "O-1", "e1", b"\x01"), Fact("order", "NEW-1", "e", b"\x00")])
            store.lines(orders=["O-30001"])
            store.lines(every_waiting=True)
            store.queues(["WAITING-SKU"])
            store.eta_told(["O-30001"])
            store.customer_lines("C-7", "WAITING-SKU")
            store.skus_with_expected_dates(["WAITING-SKU"])
            store.policies(["WAITING-SKU"])
            store.restocks(["WAITING-SKU", "SKU-7"])
            store.deliveries(["S-3"], 10)
            store.pending_cancellations(["O-30001"])
            store.status_updates(["O-30001"])
            store.shipment(str(uuid.uuid4()), "O-30001")
        plans = generic_plans(conn, "")
        assert len(plans) >= 18
        scans = [plan for plan in plans if any(f"Seq Scan on {table} " in plan for table in LARGE)]
        assert not scans, "\n\n".join(scans)


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_the_loads_made_at_once_read_what_each_load_reads(deployment: Deployment) -> None:
    with psycopg.connect(deployment.database_url, autocommit=True) as conn:
        history(conn)
        more_history(conn)
        conn.execute(
            """INSERT INTO product_policy (sku, backorders_allowed, discontinued, payment_timing, default_split,
                   decided_at, event_id)
               VALUES ('SKU-7', true, false, 'AT_ORDER', 'SHIP_AVAILABLE_NOW', now(), 'p')"""
        )
        conn.execute(
            """INSERT INTO pending_cancellation (order_id, event_id, line_ids, reason, requested_at)
               VALUES ('O-30001', 'c', '{L1}', 'CUSTOMER_REQUEST', now())"""
        )
        conn.execute("UPDATE order_line SET expected_ship_date = current_date WHERE order_id = 'O-30002'")
        store = PostgresStore(conn, lambda event: ("t", b"", b""), "dlq")
        skus, orders = ["WAITING-SKU", "SKU-7", "SKU-8"], ["O-30001", "O-30002"]
        loaded = store.load(
            Wanted(
                policies=skus, restocks=skus, pending_cancellations=orders, queues=skus, skus_with_expected_dates=skus
            )
        )
        assert loaded.policies == store.policies(skus) and len(loaded.policies) == 1
        assert loaded.restocks == store.restocks(skus) and loaded.restocks
        assert loaded.pending_cancellations == store.pending_cancellations(orders) and loaded.pending_cancellations
        assert loaded.queues == store.queues(skus) and len(loaded.queues["WAITING-SKU"]) == 5
        assert loaded.skus_with_expected_dates == store.skus_with_expected_dates(skus) == {"WAITING-SKU"}
        nothing = store.load(Wanted(queues=["SKU-7"]))  # what is not asked for is not read
        assert (nothing.policies, nothing.restocks, nothing.skus_with_expected_dates) == ([], [], set())
        assert nothing.queues == {"SKU-7": {}}


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_a_queue_deeper_than_a_load_takes_at_once_is_read_again_in_chunks(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(deployment.database_url) as conn:
        history(conn)
        conn.execute("UPDATE order_line SET sku = 'WAITING-SKU-2' WHERE order_id = 'O-30005'")
        store = PostgresStore(conn, lambda event: ("t", b"", b""), "dlq")
        skus = ["WAITING-SKU", "WAITING-SKU-2", "SKU-8"]
        whole = store.load(Wanted(queues=skus)).queues
        assert [len(whole[sku]) for sku in skus] == [4, 1, 0]
        chunked = []
        read_in_chunks = PostgresStore._waiting_in_chunks

        def spied(self: PostgresStore, skus: list[str]) -> Any:
            chunked.append(skus)
            return read_in_chunks(self, skus)

        monkeypatch.setattr(PostgresStore, "_waiting_in_chunks", spied)
        monkeypatch.setattr(unit_of_work, "QUEUE_CHUNK_ROWS", 2)
        for at_once, again in ((5, False), (4, True), (1, True)):
            monkeypatch.setattr(unit_of_work, "QUEUE_ROWS_AT_ONCE", at_once)
            chunked.clear()
            assert store.load(Wanted(queues=skus)).queues == whole
            assert bool(chunked) is again, at_once
        # what follows a read in chunks works as before, a pipeline of loads among it
        assert store.load(Wanted(queues=skus, policies=skus)).queues == whole


@pytest.mark.parametrize("deployment", [1], indirect=True)
@pytest.mark.parametrize("staged", [True, False], ids=["copied-and-staged", "as-arrays"])
def test_saving_changed_lines_does_not_scan_every_line(
    deployment: Deployment, staged: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if staged:  # as a set larger than ARRAY_ROWS is
        monkeypatch.setattr(unit_of_work, "ARRAY_ROWS", 10)
    with psycopg.connect(deployment.database_url, autocommit=True, prepare_threshold=0) as conn:
        history(conn)
        more_history(conn)
        store = PostgresStore(conn, lambda event: ("t", b"", b""), "dlq")
        with conn.transaction():
            lines = store.lines(orders=[f"O-{i}" for i in range(1, 41)])
            store.save(
                Changes(
                    changed_lines=[dataclasses.replace(x, eta_basis="b") for x in lines],
                    lines_before={(x.order_id, x.line_id): x for x in lines},
                    eta_told={x.order_id: None for x in lines},
                    facts_unclaimed=[("order", f"O-{i}") for i in range(1, 41)],
                )
            )
        plans = generic_plans(conn, "")
        if staged:  # sent alone, not prepared: planned at each run, with the statistics of the stage
            rows = conn.execute(f"EXPLAIN {unit_of_work._LINE_UPDATE_STAGED}").fetchall()
            plans.append("\n".join(row[0] for row in rows) + f"\n-- {unit_of_work._LINE_UPDATE_STAGED}")
        source = "FROM line_change" if staged else "FROM unnest"
        assert any(source in plan and "UPDATE order_line" in plan for plan in plans)
        scans = [plan for plan in plans if any(f"Seq Scan on {table} " in plan for table in LARGE)]
        assert not scans, "\n\n".join(scans)
