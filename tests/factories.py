"""Inbound records as the OMS and the warehouse would send them, with sensible defaults."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from worker.service import commands

# The field only one record of the contract carries, and that record's name. A receipt may carry a
# purchase_order_id, so a restock is known by its expected_date.
RECORD_BY_FIELD = {
    "lines": "backorder.OrderCreated",
    "receipt_id": "backorder.InventoryReceived",
    "line_ids": "backorder.OrderCancelled",
    "backorders_allowed": "backorder.ProductPolicy",
    "expected_date": "backorder.RestockExpected",
    "shipment_id": "backorder.ShipmentDispatched",
}


def at(day: str) -> dt.datetime:
    """'2026-01-05' or '2026-01-05T10:00' as an aware UTC time."""
    value = dt.datetime.fromisoformat(day)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def record_name(record: dict[str, Any]) -> str:
    """The name of the record `record` is, from the field only that record carries."""
    return next(name for field, name in RECORD_BY_FIELD.items() if field in record)


def command(record: dict[str, Any]) -> commands.Command:
    """The command `record` asks for, as if it came on its own topic."""
    name = record_name(record)
    return commands.command_for(name, name, record)


def order(
    order_id: str, placed_at: str, lines: list[tuple[str, int]] | list[dict[str, Any]], **fields: Any
) -> dict[str, Any]:
    """An OrderCreated record; `lines` as (sku, quantity) pairs or full line dicts."""
    built = []
    for i, line in enumerate(lines, start=1):
        if isinstance(line, dict):
            built.append(line)
        else:
            sku, quantity = line
            built.append(
                {
                    "line_id": f"L{i}",
                    "sku": sku,
                    "product_name": f"Product {sku}",
                    "quantity": quantity,
                    "unit_price_minor": 2500,
                }
            )
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": at(placed_at),
        "order_id": order_id,
        "customer_id": f"C-{order_id}",
        "customer_tier": "STANDARD",
        "shipping_service": "STANDARD",
        "need_by": None,
        "split_preference": None,
        "currency": "USD",
        "lines": built,
        **fields,
    }


def receipt(receipt_id: str, sku: str, quantity: int, received_at: str = "2026-01-20", **fields: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": at(received_at),
        "receipt_id": receipt_id,
        "sku": sku,
        "quantity": quantity,
        "supplier_id": None,
        "purchase_order_id": None,
        **fields,
    }


def cancellation(
    order_id: str,
    *line_ids: str,
    reason: str = "CUSTOMER_REQUEST",
    note: str | None = None,
    cancelled_at: str = "2026-01-21",
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": at(cancelled_at),
        "order_id": order_id,
        "line_ids": list(line_ids),
        "reason": reason,
        "note": note,
    }


def policy(sku: str, decided_at: str = "2026-01-01", **fields: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": at(decided_at),
        "sku": sku,
        "backorders_allowed": True,
        "discontinued": False,
        "max_backorder_qty_per_customer": None,
        "payment_timing": "AT_ORDER",
        "default_split": "SHIP_AVAILABLE_NOW",
        "lead_time_days": None,
        "stale_after_days": None,
        "available_from": None,  # contract 1.1
        "max_promise_days": None,
        **fields,
    }


def restock(
    sku: str,
    po: str,
    quantity: int,
    expected: str | dt.date,
    decided_at: str | dt.datetime = "2026-01-01",
    **fields: Any,
) -> dict[str, Any]:
    """A RestockExpected record: `quantity` of `sku` on purchase order `po`, expected on `expected`."""
    return {
        "event_id": f"restock-{po}-{sku}",
        "occurred_at": decided_at if isinstance(decided_at, dt.datetime) else at(decided_at),
        "purchase_order_id": po,
        "sku": sku,
        "supplier_id": "acme",
        "quantity": quantity,
        "expected_date": dt.date.fromisoformat(expected) if isinstance(expected, str) else expected,
        **fields,
    }


def shipment(order_id: str, shipment_id: str, dispatched_at: str = "2026-01-22", **fields: Any) -> dict[str, Any]:
    """A ShipmentDispatched record."""
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": at(dispatched_at),
        "shipment_id": shipment_id,
        "order_id": order_id,
        "carrier": "DHL",
        "tracking_number": "JD0001",
        "estimated_delivery": None,
        **fields,
    }
