"""A receipt that fills more lines than one transaction gives, on PostgreSQL: its decisions commit with the receipt,
as a plan (the units of its steps promised to their lines, off the shelf), then each step commits on its own (what
another connection sees between them), and the steps decided once are given while the SKU's queue version read
back after each is the one the next transaction finds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests import factories
from tests.integration.conftest import Deployment, wait_for
from tests.unit.test_batch import CODEC, NOW, TOPICS, message
from tests.unit.test_deep_receipt import LogRecorder
from worker.adapters.postgres.read import PostgresReadModel, state_figures
from worker.adapters.postgres.unit_of_work import PostgresUnitOfWorkFactory
from worker.domain.events import OutboundEvent
from worker.domain.policy import ShopPolicy
from worker.service import handlers
from worker.service.batch import handle_batch
from worker.service.book import Book
from worker.service.handlers import Outcome
from worker.service.messages import InboundMessage
from worker.service.views import queue


def serialize(event: OutboundEvent) -> tuple[str, bytes, bytes]:
    return type(event).__name__, event.order_id.encode(), repr(event).encode()


class Watched(PostgresUnitOfWorkFactory):
    """Before each transaction begins, what another connection sees committed: (lines allocated, units on hand of
    SKU-A, units promised, steps planned, outbox rows); SKU-A's row of the backlog report (lines waiting, on hand,
    promised); and its queue view (lines in the queue, lines promised units, units promised)."""

    def __init__(self, pool: ConnectionPool, database_url: str) -> None:
        super().__init__(pool, serialize, "dlq")
        self._url = database_url
        self.seen: list[tuple[int, ...]] = []
        self.reported: list[tuple[int, int, int]] = []
        self.queued: list[tuple[int, int, int]] = []

    def look(self) -> tuple[int, ...]:
        with psycopg.connect(self._url, autocommit=True) as conn:
            row = conn.execute(
                """SELECT (SELECT count(*) FROM order_line WHERE status = 'ALLOCATED'),
                          (SELECT coalesce(sum(available), 0) FROM stock_level WHERE sku = 'SKU-A'),
                          (SELECT coalesce(sum(promised), 0) FROM stock_level WHERE sku = 'SKU-A'),
                          (SELECT count(*) FROM receipt_plan),
                          (SELECT count(*) FROM outbox)"""
            ).fetchone()
            assert row is not None
            read = PostgresReadModel(conn)
            self.reported += [(s.lines, s.available, s.promised) for s in read.sku_backlog()]
            seen = queue(read, "SKU-A", ShopPolicy(), NOW)
            self.queued.append((len(seen.entries), seen.promised_lines, seen.promised_units))
            return tuple(int(value) for value in row)

    @contextmanager
    def __call__(self, *, rollback: bool = False) -> Iterator[Book]:
        self.seen.append(self.look())
        with super().__call__(rollback=rollback) as book:
            yield book


def run(factory: Watched, messages: list[InboundMessage]) -> list[Outcome]:
    results = handle_batch(
        messages,
        decoder=CODEC,
        expected_records=TOPICS,
        unit_of_work=factory,
        shop=ShopPolicy(),
        now=NOW,
        lines_per_transaction=5,
    )
    return [r.outcome for r in results]


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_each_step_of_a_deep_receipt_commits_alone(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    with ConnectionPool(deployment.database_url, min_size=1, max_size=2) as pool:
        factory = Watched(pool, deployment.database_url)
        placing = [
            message(i, "orders", factories.order(f"O-{i:02d}", f"2026-01-10T10:{i:02d}", [("SKU-A", 1)]))
            for i in range(12)
        ]
        assert set(run(factory, placing)) == {Outcome.PROCESSED}
        recorded = LogRecorder()
        monkeypatch.setattr(handlers, "log", recorded)
        factory.seen.clear()

        assert run(factory, [message(12, "receipts", factories.receipt("R-1", "SKU-A", 12))]) == [Outcome.PROCESSED]
        factory.seen.append(factory.look())
        # What a plan's last step asks of the orders it would give what is on hand.
        with PostgresUnitOfWorkFactory.__call__(factory) as book:
            assert book.orders_given("inventory-received/R-1", among=["O-01", "O-99"]) == {"O-01"}
            assert len(book.orders_given("inventory-received/R-1")) == 12

    # Before the receipt; after its own transaction (the receipt and its plan: every unit promised, in three steps);
    # after each step (five orders served, with their events: a fulfillment request, a status and a notification an
    # order).
    queued = factory.seen[0][-1]  # the orders' own events
    assert [(*seen[:-1], seen[-1] - queued) for seen in factory.seen] == [
        (0, 0, 0, 0, 0),
        (0, 0, 12, 3, 0),
        (5, 0, 7, 2, 15),
        (10, 0, 2, 1, 30),
        (12, 0, 0, 0, 36),
    ]
    assert factory.reported[-4:] == [(12, 0, 0), (12, 0, 12), (7, 0, 7), (2, 0, 2)]  # the lines while they wait
    # The queue view: no line the plan promises units to (the next units would go past them).
    assert factory.queued[-5:] == [(12, 0, 0), (0, 12, 12), (0, 7, 7), (0, 2, 2), (0, 0, 0)]
    # The steps decided once: each transaction found the version the one before left.
    assert [r["lines"] for r in recorded.fields("allocated")] == [12]
    assert recorded.fields("receipt_plan_given_as_lines_are") == []


STEPPED = 3_000  # waiting lines; in steps of 10, 300 transactions (1.6 s here, unstopped) to stop in the middle of


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_sigterm_between_steps_stops_the_receipt_there_and_a_new_worker_gives_the_rest(
    deployment: Deployment,
) -> None:
    """A real worker asked to stop (SIGTERM) while a deep receipt gives its steps stops after the step in hand,
    not after the last: it exits promptly with steps left in the plan, and the receipt's offset not committed.
    The next worker consumes the receipt again (a duplicate) and gives the rest: every line allocated once, every
    order sent one fulfillment request."""
    world = deployment
    with world.db() as conn, conn.transaction():
        conn.execute("INSERT INTO stock_level (sku, available, received_total) VALUES ('STEP-SKU', 0, 0)")
        conn.execute(
            """INSERT INTO customer_order (order_id, customer_id, customer_tier, shipping_service, currency,
                   placed_at, event_id, order_units, outcome)
               SELECT 'ST-' || g, 'C', 'STANDARD', 'STANDARD', 'USD', now() - interval '1 day' + g * interval '1 ms',
                   gen_random_uuid()::text, 1, 'FULLY_BACKORDERED' FROM generate_series(1, %s) g""",
            (STEPPED,),
        )
        conn.execute(
            """INSERT INTO order_line (order_id, line_id, sku, product_name, quantity, unit_price_minor, status,
                   placed_at, updated_at, backordered)
               SELECT 'ST-' || g, '1', 'STEP-SKU', 'p', 1, 1000, 'BACKORDERED',
                   now() - interval '1 day' + g * interval '1 ms', now(), true FROM generate_series(1, %s) g""",
            (STEPPED,),
        )
    steps = {"BACKORDER_TRANSACTION_MAX_LINES": "10", "BACKORDER_SHUTDOWN_TIMEOUT_SECONDS": "20"}
    worker = world.start_worker(**steps)
    world.produce("inventory-received", factories.receipt("R-STEP", "STEP-SKU", STEPPED))
    allocated = "SELECT count(*) FROM order_line WHERE sku = 'STEP-SKU' AND status = 'ALLOCATED'"
    waiting_s = 0.02
    wait_for("the receipt's first steps", lambda: world.query(allocated)[0][0] > 0, every_s=waiting_s)
    started = time.monotonic()
    assert worker.terminate(timeout_s=60) == 0
    took = time.monotonic() - started
    given, plan_left = world.query(allocated)[0][0], world.query("SELECT count(*) FROM receipt_plan")[0][0]
    print(
        f"\nSIGTERM during the steps: exit after {took:.1f}s, {given} of {STEPPED} lines given, {plan_left} steps left"
    )
    assert 0 < given < STEPPED and plan_left > 0  # stopped in the middle, its plan kept
    assert worker.logged("receipt_steps_left") and worker.logged("batch_stopped")
    with world.db() as conn:
        left = state_figures(conn)  # behind backorder_plan_steps_left and _oldest_age_seconds
    assert (left.plan_steps_left, left.plan_oldest_age_seconds > 0) == (plan_left, True)

    again = world.start_worker(**steps)
    wait_for("every step given", lambda: world.query(allocated)[0][0] == STEPPED, timeout_s=120)
    assert again.logged("receipt_resumed")
    assert world.query("SELECT count(*) FROM receipt_plan") == [(0,)]
    with world.db() as conn:
        assert (state_figures(conn).plan_steps_left, state_figures(conn).plan_oldest_age_seconds) == (0, 0.0)
    assert world.query("SELECT count(*), count(DISTINCT (order_id, line_id)), sum(quantity) FROM allocation") == [
        (STEPPED, STEPPED, STEPPED)
    ]
    assert world.stock("STEP-SKU") == (0, STEPPED, STEPPED, 0)
    requests = [m.value for m in world.read("fulfillment-requested", count=STEPPED) if m.value is not None]
    assert len(requests) == STEPPED and len({r["order_id"] for r in requests}) == STEPPED
    again.terminate()
