"""Events the worker tells the world about, one class per outbound record of the event contract.

Their ids are deterministic: a UUIDv5 of what caused them, so handling the same input twice yields
the same ids and consumers can deduplicate on `event_id`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass
from enum import StrEnum

from worker.domain.model import CancelReason, LineStatus, ShippingService

# Fixed forever: changing it would change every outbound event id.
EVENT_NAMESPACE = uuid.UUID("6f1c1a52-4f0e-4bde-9a43-2f3b8d0c7e15")


_NAMESPACE_BYTES = EVENT_NAMESPACE.bytes
# The RFC 4122 variant over the first hex digit of the ninth byte: its top two bits become 10.
_VARIANT = {digit: "89ab"[int(digit, 16) & 0x3] for digit in "0123456789abcdef"}


def event_id(*parts: str) -> str:
    """A stable id for the event named by `parts` (its kind, its cause, what it is about).

    `str(uuid.uuid5(EVENT_NAMESPACE, "\x1f".join(parts)))`, computed on the digest's hex without building UUID
    objects: this runs several times for every event the worker emits (0.9 us; 1.1 with the bytes set first).
    """
    h = hashlib.sha1(_NAMESPACE_BYTES + "\x1f".join(parts).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"  # version 5


class NotificationType(StrEnum):
    BACKORDER_CONFIRMED = "BACKORDER_CONFIRMED"
    BACKORDER_STATUS_UPDATE = "BACKORDER_STATUS_UPDATE"
    BACKORDER_ETA_CHANGED = "BACKORDER_ETA_CHANGED"
    BACKORDER_ALLOCATED = "BACKORDER_ALLOCATED"
    ORDER_SHIPPED = "ORDER_SHIPPED"
    BACKORDER_CANCELLED = "BACKORDER_CANCELLED"
    BACKORDER_REJECTED = "BACKORDER_REJECTED"


@dataclass(frozen=True, slots=True)
class FulfillmentLine:
    line_id: str
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class FulfillmentRequested:
    event_id: str
    occurred_at: dt.datetime
    shipment_id: str
    order_id: str
    customer_id: str
    shipping_service: ShippingService
    lines: tuple[FulfillmentLine, ...]
    partial: bool
    capture_payment: bool
    caused_by_event_id: str


@dataclass(frozen=True, slots=True)
class NotificationLine:
    line_id: str
    sku: str
    product_name: str
    quantity: int
    status: LineStatus
    expected_ship_date: dt.date | None = None  # this line's own date (contract 1.1); null when it waits for nothing


@dataclass(frozen=True, slots=True)
class CustomerNotification:
    event_id: str
    occurred_at: dt.datetime
    order_id: str
    customer_id: str
    type: NotificationType
    lines: tuple[NotificationLine, ...]
    cancel_allowed: bool
    expected_ship_date: dt.date | None = None
    carrier: str | None = None
    tracking_number: str | None = None
    estimated_delivery: dt.date | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class BackorderStatusChanged:
    event_id: str
    occurred_at: dt.datetime
    order_id: str
    line_id: str
    sku: str
    status: LineStatus
    quantity_ordered: int
    quantity_allocated: int  # from contract 1.1: released to shipping only (reserved units are quantity_reserved)
    quantity_backordered: int
    expected_ship_date: dt.date | None = None
    reason: str | None = None
    quantity_reserved: int = 0  # held for a ship-complete line, not yet released to shipping
    cancel_reason: CancelReason | None = None  # set when status is CANCELLED


OutboundEvent = FulfillmentRequested | CustomerNotification | BackorderStatusChanged
