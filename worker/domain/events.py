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
from worker.domain.values import interpreted_inits

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

    def __init__(
        self,
        line_id: str,
        sku: str,
        quantity: int,
    ) -> None:
        # Written out, not left to `dataclasses`: compiled, a native `__init__` (worker/domain/values.py).
        self.line_id = line_id  # type: ignore[misc]
        self.sku = sku  # type: ignore[misc]
        self.quantity = quantity  # type: ignore[misc]


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

    def __init__(
        self,
        event_id: str,
        occurred_at: dt.datetime,
        shipment_id: str,
        order_id: str,
        customer_id: str,
        shipping_service: ShippingService,
        lines: tuple[FulfillmentLine, ...],
        partial: bool,
        capture_payment: bool,
        caused_by_event_id: str,
    ) -> None:
        # Written out, not left to `dataclasses`: compiled, a native `__init__` (worker/domain/values.py).
        self.event_id = event_id  # type: ignore[misc]
        self.occurred_at = occurred_at  # type: ignore[misc]
        self.shipment_id = shipment_id  # type: ignore[misc]
        self.order_id = order_id  # type: ignore[misc]
        self.customer_id = customer_id  # type: ignore[misc]
        self.shipping_service = shipping_service  # type: ignore[misc]
        self.lines = lines  # type: ignore[misc]
        self.partial = partial  # type: ignore[misc]
        self.capture_payment = capture_payment  # type: ignore[misc]
        self.caused_by_event_id = caused_by_event_id  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class NotificationLine:
    line_id: str
    sku: str
    product_name: str
    quantity: int
    status: LineStatus
    expected_ship_date: dt.date | None = None  # this line's own date (contract 1.1); null when it waits for nothing

    def __init__(
        self,
        line_id: str,
        sku: str,
        product_name: str,
        quantity: int,
        status: LineStatus,
        expected_ship_date: dt.date | None = None,
    ) -> None:
        # Written out, not left to `dataclasses`: compiled, a native `__init__` (worker/domain/values.py).
        self.line_id = line_id  # type: ignore[misc]
        self.sku = sku  # type: ignore[misc]
        self.product_name = product_name  # type: ignore[misc]
        self.quantity = quantity  # type: ignore[misc]
        self.status = status  # type: ignore[misc]
        self.expected_ship_date = expected_ship_date  # type: ignore[misc]


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

    def __init__(
        self,
        event_id: str,
        occurred_at: dt.datetime,
        order_id: str,
        customer_id: str,
        type: NotificationType,
        lines: tuple[NotificationLine, ...],
        cancel_allowed: bool,
        expected_ship_date: dt.date | None = None,
        carrier: str | None = None,
        tracking_number: str | None = None,
        estimated_delivery: dt.date | None = None,
        reason: str | None = None,
    ) -> None:
        # Written out, not left to `dataclasses`: compiled, a native `__init__` (worker/domain/values.py).
        self.event_id = event_id  # type: ignore[misc]
        self.occurred_at = occurred_at  # type: ignore[misc]
        self.order_id = order_id  # type: ignore[misc]
        self.customer_id = customer_id  # type: ignore[misc]
        self.type = type  # type: ignore[misc]
        self.lines = lines  # type: ignore[misc]
        self.cancel_allowed = cancel_allowed  # type: ignore[misc]
        self.expected_ship_date = expected_ship_date  # type: ignore[misc]
        self.carrier = carrier  # type: ignore[misc]
        self.tracking_number = tracking_number  # type: ignore[misc]
        self.estimated_delivery = estimated_delivery  # type: ignore[misc]
        self.reason = reason  # type: ignore[misc]


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

    def __init__(
        self,
        event_id: str,
        occurred_at: dt.datetime,
        order_id: str,
        line_id: str,
        sku: str,
        status: LineStatus,
        quantity_ordered: int,
        quantity_allocated: int,
        quantity_backordered: int,
        expected_ship_date: dt.date | None = None,
        reason: str | None = None,
        quantity_reserved: int = 0,
        cancel_reason: CancelReason | None = None,
    ) -> None:
        # Written out, not left to `dataclasses`: compiled, a native `__init__` (worker/domain/values.py).
        self.event_id = event_id  # type: ignore[misc]
        self.occurred_at = occurred_at  # type: ignore[misc]
        self.order_id = order_id  # type: ignore[misc]
        self.line_id = line_id  # type: ignore[misc]
        self.sku = sku  # type: ignore[misc]
        self.status = status  # type: ignore[misc]
        self.quantity_ordered = quantity_ordered  # type: ignore[misc]
        self.quantity_allocated = quantity_allocated  # type: ignore[misc]
        self.quantity_backordered = quantity_backordered  # type: ignore[misc]
        self.expected_ship_date = expected_ship_date  # type: ignore[misc]
        self.reason = reason  # type: ignore[misc]
        self.quantity_reserved = quantity_reserved  # type: ignore[misc]
        self.cancel_reason = cancel_reason  # type: ignore[misc]


OutboundEvent = FulfillmentRequested | CustomerNotification | BackorderStatusChanged

interpreted_inits(
    __file__, FulfillmentLine, FulfillmentRequested, NotificationLine, CustomerNotification, BackorderStatusChanged
)
