"""A save writes a small set as arrays in its pipeline and a large one by COPY: both leave the same rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests import factories
from tests.integration.conftest import Deployment
from tests.unit.fakes import handle_record
from worker.adapters.postgres import unit_of_work
from worker.adapters.postgres.unit_of_work import PostgresStore
from worker.domain.events import OutboundEvent
from worker.domain.policy import ShopPolicy
from worker.service.book import Book

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
    "stock_level": "sku, available, received_total",
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
