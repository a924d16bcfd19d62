"""A save writes a small set as arrays in its pipeline and a large one by COPY: both leave the same rows."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests import factories
from tests.integration.conftest import Deployment
from tests.unit.fakes import handle_record
from worker.adapters.postgres import unit_of_work
from worker.adapters.postgres.read import sku_backlog
from worker.adapters.postgres.unit_of_work import PostgresStore
from worker.domain.events import OutboundEvent
from worker.domain.policy import ShopPolicy
from worker.service import handlers
from worker.service.book import Book
from worker.service.ports import StoreRefused

SHOP = ShopPolicy()
# What a save writes, without what the server stamps (now(), sequences, the random queue versions).
TABLES = {
    "customer_order": "order_id, customer_id, customer_tier, shipping_service, need_by, split_preference, currency,"
    " placed_at, event_id, order_units, outcome, eta_told",
    "order_line": "order_id, line_id, sku, product_name, quantity, unit_price_minor, split, placed_at,"
    " quantity_allocated, quantity_reserved, quantity_rejected, quantity_cancelled, quantity_shipped, status,"
    " status_reason, cancel_reason, expected_ship_date, eta_basis, backordered, filled_at, shipped_at",
    "allocation": "order_id, line_id, sku, quantity, reserved, shipped, shipment_id, cause, rank, reason, allocated_at",
    "stock_receipt": "receipt_id, sku, quantity, supplier_id, purchase_order_id, received_at, event_id",
    "outbox": "event_id, topic, message_key, message_value, source_time",
    "stock_level": "sku, available, received_total, promised",
    "receipt_plan": "cause, step, sku, order_ids, line_ids, units",
    "inbound_fact": "kind, natural_key, event_id, content_hash",
    "state_delta": "name, key, value",
    "sku_queue_version": "sku",
}


def serialize(event: OutboundEvent) -> tuple[str, bytes, bytes]:
    return type(event).__name__, event.order_id.encode(), repr(event).encode()


def rows(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    found = {
        name: conn.execute(f"SELECT {columns} FROM {name} ORDER BY {columns}").fetchall()
        for name, columns in TABLES.items()
    }
    # The outbox keeps the events' order: its ids ascend as the events were emitted.
    found["outbox order"] = conn.execute("SELECT event_id FROM outbox ORDER BY outbox_id").fetchall()
    return found


def written(conn: psycopg.Connection[Any], array_rows: int, apply: Callable[[Book], None]) -> dict[str, Any]:
    """The rows after `apply` is saved with sets of up to `array_rows` rows as arrays; then rolled back."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(unit_of_work, "ARRAY_ROWS", array_rows)
        with conn.transaction(force_rollback=True):
            book = Book(PostgresStore(conn, serialize, "dlq"))
            apply(book)
            book.save()
            return rows(conn)


# The same records (and event ids) for every save.
ORDERS = [
    factories.receipt("R-0", "SKU-A", 25, "2026-01-09"),
    *(
        factories.order(
            f"O-{i:02d}",
            "2026-01-10",
            [("SKU-A", 1 + i % 2), ("SKU-B", 1)] if i % 3 else [("SKU-A", 2)],
            customer_tier="VIP" if i % 5 == 0 else "STANDARD",
        )
        for i in range(40)
    ),
]
RECEIPTS = [factories.receipt("R-1", "SKU-A", 40, "2026-01-20"), factories.receipt("R-2", "SKU-B", 30, "2026-01-20")]


def orders(book: Book) -> None:
    for record in ORDERS:
        handle_record(book, record, SHOP, factories.at("2026-01-10"))


def receipts(book: Book) -> None:
    for record in RECEIPTS:
        handle_record(book, record, SHOP, factories.at("2026-01-20"))


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_arrays_and_copy_write_the_same_rows(deployment: Deployment) -> None:
    with psycopg.connect(deployment.database_url, autocommit=True) as conn:
        copied, as_arrays = written(conn, 0, orders), written(conn, 1_000_000, orders)
        assert copied == as_arrays
        assert len(copied["order_line"]) == 66 and len(copied["outbox"]) > 80
        with conn.transaction():  # the orders stay, and the receipts change their lines
            book = Book(PostgresStore(conn, serialize, "dlq"))
            orders(book)
            book.save()
        copied, as_arrays = written(conn, 0, receipts), written(conn, 1_000_000, receipts)
        assert copied == as_arrays
        before = rows(conn)
        assert copied["order_line"] != before["order_line"]  # the receipts changed lines
        assert len(copied["allocation"]) > len(before["allocation"])


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_an_event_already_in_the_outbox_is_left_out_and_the_rest_written_in_order(deployment: Deployment) -> None:
    """A large set of events is copied into the outbox itself; when one of them is there already, the COPY
    fails on the event id, and the set goes through the stage instead, whose insert leaves that one out (as the
    arrays' insert does)."""
    with psycopg.connect(deployment.database_url, autocommit=True) as conn:
        whole = written(conn, 0, orders)
        first, last = whole["outbox order"][0][0], whole["outbox order"][-1][0]
        for there in (first, last):

            def after_it(book: Book, there: Any = there) -> None:
                conn.execute(
                    "INSERT INTO outbox (event_id, topic, message_key, message_value) VALUES (%s, 'earlier', '', '')",
                    (there,),
                )
                orders(book)

            for array_rows in (0, 1_000_000):  # copied, as arrays
                found = written(conn, array_rows, after_it)
                assert [row for row in found["outbox"] if row[0] == there] == [(there, "earlier", b"", b"", None)]
                assert [row for row in found["outbox"] if row[0] != there] == [
                    row for row in whole["outbox"] if row[0] != there
                ]
                # the earlier row first (its id is the smallest), then the others in the order they were emitted
                assert found["outbox order"] == [(there,)] + [e for e in whole["outbox order"] if e != (there,)]
                assert {t: found[t] for t in TABLES if t != "outbox"} == {t: whole[t] for t in TABLES if t != "outbox"}


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_rows_made_ahead_of_their_copy_are_the_rows_written(deployment: Deployment) -> None:
    """While the server takes in a COPY, the rows of the COPYs after it are made for as long as it is busy: none,
    all or some of them made ahead, the rows written are those of the arrays' inserts, in the same order."""
    with psycopg.connect(deployment.database_url, autocommit=True) as conn:
        as_arrays = written(conn, 1_000_000, orders)
        for most, between in ((0, 32), (1_000_000, 1_000_000), (7, 3)):  # none, all, some of them
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(unit_of_work, "AHEAD_ROWS", most)
                patch.setattr(unit_of_work, "_AHEAD_SLICE", between)
                assert written(conn, 0, orders) == as_arrays, (most, between)


def failing_on_o_07(event: OutboundEvent) -> tuple[str, bytes, bytes]:
    if event.order_id == "O-07":
        raise ValueError("cannot encode O-07's event")
    return serialize(event)


@contextlib.contextmanager
def all_made_at_the_first_copy() -> Iterator[None]:
    """Every set by COPY, and every row of the later COPYs made at the end of the first."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(unit_of_work, "ARRAY_ROWS", 0)
        patch.setattr(unit_of_work, "_AHEAD_SLICE", 1_000_000)
        yield


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_an_event_that_fails_to_encode_ahead_of_its_copy_fails_the_save_and_leaves_the_connection_fit(
    deployment: Deployment,
) -> None:
    """An event made ahead, while the server takes in the orders' COPY, fails to encode: the save fails with that
    error, once the COPY's answer is read, and the connection rolls back and serves the next statement."""

    with psycopg.connect(deployment.database_url, autocommit=True) as conn, all_made_at_the_first_copy():
        with pytest.raises(ValueError, match="O-07") as failed, conn.transaction():
            book = Book(PostgresStore(conn, failing_on_o_07, "dlq"))
            orders(book)
            book.save()
        assert "_copy_end" in [entry.name for entry in failed.traceback]
        assert conn.execute("SELECT count(*) FROM customer_order WHERE order_id = 'O-07'").fetchone() == (0,)


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_a_copy_the_server_refuses_while_rows_made_ahead_fail_too_is_the_server_s_refusal(
    deployment: Deployment,
) -> None:
    """The orders' COPY is refused (here a check added for the test) while an event made ahead during its end fails
    to encode: the server's refusal is what the save raises (a deadlock is retried; the encoding alone would be
    taken for a message's fault), from the encoding's failure; the connection then serves the next statement."""

    with psycopg.connect(deployment.database_url, autocommit=True) as conn, all_made_at_the_first_copy():
        with pytest.raises(StoreRefused, match="CheckViolation") as refused, conn.transaction(force_rollback=True):
            conn.execute("ALTER TABLE customer_order ADD CONSTRAINT not_o_03 CHECK (order_id <> 'O-03')")
            book = Book(PostgresStore(conn, failing_on_o_07, "dlq"))
            orders(book)
            book.save()
        assert isinstance(refused.value.__cause__, psycopg.errors.CheckViolation)
        assert isinstance(refused.value.__cause__.__cause__, ValueError)
        assert conn.execute("SELECT count(*) FROM customer_order").fetchone() == (0,)


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_the_rows_of_a_later_copy_are_made_while_the_server_runs_a_long_statement(deployment: Deployment) -> None:
    """A deep receipt's step updates its lines from their stage in a statement of its own: while the server runs it
    (here a sleep), the rows of the COPY after it are made; the COPY then writes each of them once, in order."""
    asked: list[bool] = []
    make_ahead = unit_of_work._make_ahead

    def watched(later: Any, busy: Callable[[], bool]) -> None:
        asked.append(busy())
        make_ahead(later, busy)

    made: list[int] = []

    def rows() -> Any:
        for n in range(100):
            made.append(n)
            yield (n,)

    with psycopg.connect(deployment.database_url, autocommit=True) as conn, pytest.MonkeyPatch.context() as patch:
        patch.setattr(unit_of_work, "_make_ahead", watched)
        with conn.transaction(force_rollback=True):
            conn.execute("CREATE TEMP TABLE copied (n int4) ON COMMIT DROP")
            sleep = unit_of_work._Long("SELECT pg_sleep(0.3)")
            unit_of_work._run(conn, [sleep, unit_of_work._Copy("copied", (("n", "int4"),), rows())])
            assert asked[0] is True and len(made) == 100  # all made while the server slept
            assert conn.execute("SELECT n FROM copied").fetchall() == [(n,) for n in range(100)]


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_a_long_statement_the_server_refuses_raises_its_error_and_leaves_the_connection_fit(
    deployment: Deployment,
) -> None:
    with psycopg.connect(deployment.database_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            unit_of_work._run(conn, [unit_of_work._Long("SELECT 1 / 0")])
        assert conn.execute("SELECT 2").fetchone() == (2,)


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_a_receipt_saved_in_steps_writes_what_one_save_writes(deployment: Deployment) -> None:
    """A deep receipt's steps each go through the stages (here every set does): a stage filled by an earlier
    step of the same transaction is emptied first, or its rows are applied again. O-3's line is filled in part
    by one step, then dated anew once the steps are done (its rest is now first to meet the restock), so it
    changes in two saves of the transaction."""
    queued = [
        factories.restock("SKU-A", "PO-1", 4, "2026-02-10", event_id="restock-PO-1"),
        *(
            factories.order(f"O-{i}", "2026-01-10", [("SKU-A", 3)], split_preference="SHIP_AVAILABLE_NOW")
            for i in range(6)
        ),
    ]

    def receipt(book: Book) -> None:
        handle_record(
            book, factories.receipt("R-9", "SKU-A", 10, event_id="receipt-R-9"), SHOP, factories.at("2026-01-20")
        )

    with psycopg.connect(deployment.database_url, autocommit=True) as conn:
        with conn.transaction():
            book = Book(PostgresStore(conn, serialize, "dlq"))
            for record in queued:
                handle_record(book, record, SHOP, factories.at("2026-01-10"))
            book.save()
        whole = written(conn, 0, receipt)
        staged: list[Any] = []

        def in_steps(book: Book) -> None:
            receipt(book)
            book.save()  # the last save: O-3's new date, and the events of the orders announced last
            staged.extend(conn.execute("SELECT order_id, line_id FROM line_change").fetchall())

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(handlers, "FILLS_PER_SAVE", 1)
            stepped = written(conn, 0, in_steps)
    assert staged == [("O-3", "L1")]  # not also the rows of the saves before it
    for found in (whole, stepped):
        # Each order's events in their order: across orders, an order whose filled line still waits comes last.
        key_of = {row[0]: bytes(row[2]) for row in found["outbox"]}
        by_order: dict[bytes, list[Any]] = {}
        for (event,) in found.pop("outbox order"):
            by_order.setdefault(key_of[event], []).append(event)
        found["outbox by order"] = by_order
        totals: dict[tuple[str, str], int] = {}  # each save adds its own deltas to the running totals
        for name, key, value in found.pop("state_delta"):
            totals[(name, key)] = totals.get((name, key), 0) + value
        found["state totals"] = totals
    assert stepped == whole
    partly = [line for line in whole["order_line"] if line[0] == "O-3"]
    assert [(line[8], line[13], line[16] is not None) for line in partly] == [(1, "PARTIALLY_ALLOCATED", True)]


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_a_sku_holds_more_units_on_hand_than_four_bytes_count(deployment: Deployment) -> None:
    """Units on hand add up receipt after receipt while nobody waits for them: past 2,147,483,647 a receipt is
    still saved (it was refused as out of range, and dead-lettered)."""
    with psycopg.connect(deployment.database_url, autocommit=True) as conn, conn.transaction(force_rollback=True):
        conn.execute(
            "INSERT INTO stock_level (sku, available, received_total) VALUES ('SKU-WIDE', 2147000000, 2147000000)"
        )
        book = Book(PostgresStore(conn, serialize, "dlq"))
        handle_record(book, factories.receipt("R-WIDE", "SKU-WIDE", 1_000_000), SHOP, factories.at("2026-01-20"))
        book.save()
        row = conn.execute("SELECT available, received_total FROM stock_level WHERE sku = 'SKU-WIDE'").fetchone()
        assert row == (2_148_000_000, 2_148_000_000)


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_the_reports_next_restock_is_the_units_of_the_earliest_date(deployment: Deployment) -> None:
    with psycopg.connect(deployment.database_url, autocommit=True) as conn, conn.transaction(force_rollback=True):
        book = Book(PostgresStore(conn, serialize, "dlq"))
        for record in (
            factories.order("O-NEXT", "2026-01-10", [("SKU-NEXT", 5)]),
            factories.restock("SKU-NEXT", "PO-1", 30, "2026-02-01"),
            factories.restock("SKU-NEXT", "PO-2", 20, "2026-02-01"),
            factories.restock("SKU-NEXT", "PO-3", 100, "2026-03-01"),
        ):
            handle_record(book, record, SHOP, factories.at("2026-01-10"))
        book.save()
        [backlog] = [b for b in sku_backlog(conn) if b.sku == "SKU-NEXT"]
        assert (backlog.next_restock, backlog.next_restock_units) == (dt.date(2026, 2, 1), 50)
