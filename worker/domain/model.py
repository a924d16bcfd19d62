"""What the business talks about: orders and their lines, stock receipts, and lines waiting for stock."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum


class CustomerTier(StrEnum):
    STANDARD = "STANDARD"
    VIP = "VIP"
    WHOLESALE = "WHOLESALE"


class ShippingService(StrEnum):
    STANDARD = "STANDARD"
    EXPEDITED = "EXPEDITED"


class SplitPreference(StrEnum):
    SHIP_AVAILABLE_NOW = "SHIP_AVAILABLE_NOW"
    SHIP_COMPLETE = "SHIP_COMPLETE"


class PaymentTiming(StrEnum):
    AT_ORDER = "AT_ORDER"
    AT_SHIPMENT = "AT_SHIPMENT"


class LineStatus(StrEnum):
    ALLOCATED = "ALLOCATED"
    PARTIALLY_ALLOCATED = "PARTIALLY_ALLOCATED"
    BACKORDERED = "BACKORDERED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    SHIPPED = "SHIPPED"

    @classmethod
    def of(cls, ordered: int, allocated: int) -> LineStatus:
        """The status of a line that is still live, from how much of it has stock."""
        if allocated >= ordered:
            return cls.ALLOCATED
        return cls.PARTIALLY_ALLOCATED if allocated > 0 else cls.BACKORDERED


#: Lines in these states wait in their SKU's backorder queue.
WAITING = frozenset({LineStatus.BACKORDERED, LineStatus.PARTIALLY_ALLOCATED})


@dataclass(frozen=True)
class OrderLine:
    line_id: str
    sku: str
    product_name: str
    quantity: int
    unit_price_minor: int


@dataclass(frozen=True)
class Order:
    order_id: str
    customer_id: str
    customer_tier: CustomerTier
    shipping_service: ShippingService
    need_by: dt.date | None
    split_preference: SplitPreference | None
    currency: str
    placed_at: dt.datetime
    lines: tuple[OrderLine, ...]


@dataclass(frozen=True)
class StockReceipt:
    receipt_id: str
    sku: str
    quantity: int
    received_at: dt.datetime
    supplier_id: str | None
    purchase_order_id: str | None


@dataclass(frozen=True)
class Backorder:
    """An order line of one SKU that still waits for some or all of its units."""

    order_id: str
    line_id: str
    sku: str
    product_name: str
    customer_id: str
    shipping_service: ShippingService
    placed_at: dt.datetime
    quantity: int
    allocated: int

    @property
    def open_quantity(self) -> int:
        return self.quantity - self.allocated

    @property
    def fifo_key(self) -> tuple[dt.datetime, str, str]:
        """Oldest order first; ties broken by order and line id so the order is total."""
        return (self.placed_at, self.order_id, self.line_id)


@dataclass(frozen=True)
class Fill:
    """Units given to one waiting line by one allocation."""

    backorder: Backorder
    quantity: int

    @property
    def allocated_after(self) -> int:
        return self.backorder.allocated + self.quantity

    @property
    def status_after(self) -> LineStatus:
        return LineStatus.of(self.backorder.quantity, self.allocated_after)


@dataclass(frozen=True)
class ShopPolicy:
    """The shop's defaults, from configuration."""

    payment_timing: PaymentTiming = PaymentTiming.AT_ORDER

    @property
    def capture_payment_at_shipment(self) -> bool:
        return self.payment_timing is PaymentTiming.AT_SHIPMENT
