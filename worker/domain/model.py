"""What the business talks about: orders and their lines, stock receipts, and lines waiting for stock."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from worker.domain.values import compiled, interpreted_inits

if TYPE_CHECKING:
    from worker.domain.allocation import Fill


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


class CancelReason(StrEnum):
    CUSTOMER_REQUEST = "CUSTOMER_REQUEST"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    FRAUD_SUSPECTED = "FRAUD_SUSPECTED"
    MERCHANT = "MERCHANT"
    OTHER = "OTHER"
    STALE = "STALE"  # the worker's own: waited past the product's stale_after_days (contract 1.1)


class LineStatus(StrEnum):
    ALLOCATED = "ALLOCATED"
    PARTIALLY_ALLOCATED = "PARTIALLY_ALLOCATED"
    BACKORDERED = "BACKORDERED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    SHIPPED = "SHIPPED"
    # Contract 1.1. UNKNOWN is the schema's default: what a reader gets for a symbol added after its version;
    # the worker never sends it. The other two answer a cancellation that changed nothing, and are never a
    # line's state: CANCEL_PENDING (the order is not known yet; the cancellation is kept) and UNKNOWN_LINE
    # (the order has no such line).
    UNKNOWN = "UNKNOWN"
    CANCEL_PENDING = "CANCEL_PENDING"
    UNKNOWN_LINE = "UNKNOWN_LINE"

    @classmethod
    def of(cls, wanted: int, set_aside: int, *, rejected: int = 0, cancelled: int = 0) -> LineStatus:
        """A line's status from its units: `wanted` is what is still to be served after rejections and
        cancellations, `set_aside` what it holds (allocated for shipment or reserved)."""
        if set_aside < wanted:
            return cls.PARTIALLY_ALLOCATED if set_aside > 0 else cls.BACKORDERED
        if cancelled > 0:
            return cls.CANCELLED
        if rejected > 0:
            return cls.REJECTED
        return cls.ALLOCATED


#: Lines in these states wait in their SKU's backorder queue.
WAITING = frozenset({LineStatus.BACKORDERED, LineStatus.PARTIALLY_ALLOCATED})


@dataclass(frozen=True, slots=True)
class OrderLine:
    line_id: str
    sku: str
    product_name: str
    quantity: int
    unit_price_minor: int

    def __init__(
        self,
        line_id: str,
        sku: str,
        product_name: str,
        quantity: int,
        unit_price_minor: int,
    ) -> None:
        # Written out, not left to `dataclasses`: compiled, a native `__init__` (worker/domain/values.py).
        self.line_id = line_id  # type: ignore[misc]
        self.sku = sku  # type: ignore[misc]
        self.product_name = product_name  # type: ignore[misc]
        self.quantity = quantity  # type: ignore[misc]
        self.unit_price_minor = unit_price_minor  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
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

    def __init__(
        self,
        order_id: str,
        customer_id: str,
        customer_tier: CustomerTier,
        shipping_service: ShippingService,
        need_by: dt.date | None,
        split_preference: SplitPreference | None,
        currency: str,
        placed_at: dt.datetime,
        lines: tuple[OrderLine, ...],
    ) -> None:
        # Written out, not left to `dataclasses`: compiled, a native `__init__` (worker/domain/values.py).
        self.order_id = order_id  # type: ignore[misc]
        self.customer_id = customer_id  # type: ignore[misc]
        self.customer_tier = customer_tier  # type: ignore[misc]
        self.shipping_service = shipping_service  # type: ignore[misc]
        self.need_by = need_by  # type: ignore[misc]
        self.split_preference = split_preference  # type: ignore[misc]
        self.currency = currency  # type: ignore[misc]
        self.placed_at = placed_at  # type: ignore[misc]
        self.lines = lines  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class Cancellation:
    order_id: str
    line_ids: tuple[str, ...]  # empty: every open line of the order
    reason: CancelReason
    note: str | None
    requested_at: dt.datetime


def merge_cancellations(cancellations: list[Cancellation]) -> Cancellation:
    """Several cancellations that arrived before their order, as one: together they cancel every line any
    of them names (every line, if one names none); the earliest gives the reason."""
    ordered = sorted(cancellations, key=lambda c: c.requested_at)
    first = ordered[0]
    every_line = any(not c.line_ids for c in ordered)
    line_ids = () if every_line else tuple(sorted({line_id for c in ordered for line_id in c.line_ids}))
    return Cancellation(first.order_id, line_ids, first.reason, first.note, first.requested_at)


@dataclass(frozen=True, slots=True)
class StockReceipt:
    receipt_id: str
    sku: str
    quantity: int
    received_at: dt.datetime
    supplier_id: str | None
    purchase_order_id: str | None


@mypyc_attr(acyclic=True)  # a frozen value, never in a cycle: compiled, not tracked (README, "Compiled rules")
@dataclass(frozen=True, slots=True)
class Backorder:
    """An order line of one SKU that still waits for some or all of its units.

    `quantity` is what the line still wants in all (ordered, less what was rejected or cancelled);
    `allocated` of it is on its way to the customer, `reserved` is held for it until it can ship
    complete.
    """

    order_id: str
    line_id: str
    sku: str
    product_name: str
    customer_id: str
    customer_tier: CustomerTier
    shipping_service: ShippingService
    need_by: dt.date | None
    order_units: int  # units of the whole order: "large order" ranking
    split: SplitPreference
    placed_at: dt.datetime
    quantity: int
    allocated: int = 0
    reserved: int = 0
    unit_price_minor: int = 0
    rejected: int = 0  # units of the line refused by policy (not part of `quantity`)
    cancelled: int = 0  # units of the line cancelled (not part of `quantity`)
    # When its wait began, if not when it was placed: a pre-order waits from its product's release date
    # (its age, for promotion past the starvation limit, counts from then).
    waits_from: dt.datetime | None = None

    def __init__(
        self,
        order_id: str,
        line_id: str,
        sku: str,
        product_name: str,
        customer_id: str,
        customer_tier: CustomerTier,
        shipping_service: ShippingService,
        need_by: dt.date | None,
        order_units: int,
        split: SplitPreference,
        placed_at: dt.datetime,
        quantity: int,
        allocated: int = 0,
        reserved: int = 0,
        unit_price_minor: int = 0,
        rejected: int = 0,
        cancelled: int = 0,
        waits_from: dt.datetime | None = None,
    ) -> None:
        # Written out, not left to `dataclasses`: compiled, a native `__init__` (worker/domain/values.py).
        self.order_id = order_id  # type: ignore[misc]
        self.line_id = line_id  # type: ignore[misc]
        self.sku = sku  # type: ignore[misc]
        self.product_name = product_name  # type: ignore[misc]
        self.customer_id = customer_id  # type: ignore[misc]
        self.customer_tier = customer_tier  # type: ignore[misc]
        self.shipping_service = shipping_service  # type: ignore[misc]
        self.need_by = need_by  # type: ignore[misc]
        self.order_units = order_units  # type: ignore[misc]
        self.split = split  # type: ignore[misc]
        self.placed_at = placed_at  # type: ignore[misc]
        self.quantity = quantity  # type: ignore[misc]
        self.allocated = allocated  # type: ignore[misc]
        self.reserved = reserved  # type: ignore[misc]
        self.unit_price_minor = unit_price_minor  # type: ignore[misc]
        self.rejected = rejected  # type: ignore[misc]
        self.cancelled = cancelled  # type: ignore[misc]
        self.waits_from = waits_from  # type: ignore[misc]

    @property
    def open_quantity(self) -> int:
        return self.quantity - self.allocated - self.reserved

    @property
    def fifo_key(self) -> tuple[dt.datetime, str, str]:
        """Oldest order first; ties broken by order and line id so the order is total."""
        return (self.placed_at, self.order_id, self.line_id)


class OrderOutcome(StrEnum):
    """How an order fared when it was placed; the backorder rate is the share of the backordered ones."""

    IN_STOCK = "IN_STOCK"
    PARTLY_BACKORDERED = "PARTLY_BACKORDERED"
    FULLY_BACKORDERED = "FULLY_BACKORDERED"
    REJECTED = "REJECTED"

    @classmethod
    def of(cls, lines: list[OrderLineState]) -> OrderOutcome:
        if any(line.rejected for line in lines):
            return cls.REJECTED
        if not any(line.waiting for line in lines):
            return cls.IN_STOCK
        if any(line.allocated + line.reserved for line in lines):
            return cls.PARTLY_BACKORDERED
        return cls.FULLY_BACKORDERED


@mypyc_attr(acyclic=True)  # a frozen value, never in a cycle: compiled, not tracked (README, "Compiled rules")
@dataclass(frozen=True, slots=True)
class OrderLineState:
    """Everything known about one order line: what was ordered and where its units are."""

    order_id: str
    line_id: str
    sku: str
    product_name: str
    customer_id: str
    customer_tier: CustomerTier
    shipping_service: ShippingService
    need_by: dt.date | None
    order_units: int
    split: SplitPreference
    placed_at: dt.datetime
    unit_price_minor: int
    ordered: int
    allocated: int
    reserved: int
    rejected: int
    cancelled: int
    status: LineStatus
    reason: str | None = None  # why the line is in its status, as last told to the OMS
    expected_ship_date: dt.date | None = None
    shipped: int = 0
    cancel_reason: CancelReason | None = None  # why its units were cancelled, if they were
    eta_basis: str | None = None  # what its expected ship date rests on
    backordered: bool = False  # it waited for stock when its order was placed
    filled_at: dt.datetime | None = None  # when every unit it wants was set aside for it
    shipped_at: dt.datetime | None = None  # when its last unit shipped

    def __init__(
        self,
        order_id: str,
        line_id: str,
        sku: str,
        product_name: str,
        customer_id: str,
        customer_tier: CustomerTier,
        shipping_service: ShippingService,
        need_by: dt.date | None,
        order_units: int,
        split: SplitPreference,
        placed_at: dt.datetime,
        unit_price_minor: int,
        ordered: int,
        allocated: int,
        reserved: int,
        rejected: int,
        cancelled: int,
        status: LineStatus,
        reason: str | None = None,
        expected_ship_date: dt.date | None = None,
        shipped: int = 0,
        cancel_reason: CancelReason | None = None,
        eta_basis: str | None = None,
        backordered: bool = False,
        filled_at: dt.datetime | None = None,
        shipped_at: dt.datetime | None = None,
    ) -> None:
        # Written out, not left to `dataclasses`: compiled, a native `__init__` (worker/domain/values.py).
        self.order_id = order_id  # type: ignore[misc]
        self.line_id = line_id  # type: ignore[misc]
        self.sku = sku  # type: ignore[misc]
        self.product_name = product_name  # type: ignore[misc]
        self.customer_id = customer_id  # type: ignore[misc]
        self.customer_tier = customer_tier  # type: ignore[misc]
        self.shipping_service = shipping_service  # type: ignore[misc]
        self.need_by = need_by  # type: ignore[misc]
        self.order_units = order_units  # type: ignore[misc]
        self.split = split  # type: ignore[misc]
        self.placed_at = placed_at  # type: ignore[misc]
        self.unit_price_minor = unit_price_minor  # type: ignore[misc]
        self.ordered = ordered  # type: ignore[misc]
        self.allocated = allocated  # type: ignore[misc]
        self.reserved = reserved  # type: ignore[misc]
        self.rejected = rejected  # type: ignore[misc]
        self.cancelled = cancelled  # type: ignore[misc]
        self.status = status  # type: ignore[misc]
        self.reason = reason  # type: ignore[misc]
        self.expected_ship_date = expected_ship_date  # type: ignore[misc]
        self.shipped = shipped  # type: ignore[misc]
        self.cancel_reason = cancel_reason  # type: ignore[misc]
        self.eta_basis = eta_basis  # type: ignore[misc]
        self.backordered = backordered  # type: ignore[misc]
        self.filled_at = filled_at  # type: ignore[misc]
        self.shipped_at = shipped_at  # type: ignore[misc]

    @property
    def wanted(self) -> int:
        return self.ordered - self.rejected - self.cancelled

    @property
    def open_quantity(self) -> int:
        return self.wanted - self.allocated - self.reserved

    @property
    def waiting(self) -> bool:
        """Not all of it is on its way yet: it waits for units, or holds them until it can ship complete."""
        return self.open_quantity > 0 or self.held

    @property
    def held(self) -> bool:
        """Complete, but its units are reserved until the rest of its order can ship."""
        return self.reserved > 0 and self.open_quantity == 0

    def _with(self, **changes: Any) -> OrderLineState:
        """`dataclasses.replace`, for the changes a line goes through with every order: that walks the fields and
        calls `__init__` by keyword (6.0 us for this class, interpreted); this takes the values in order and
        makes the line from them (`_line_of`: 2.6 us interpreted)."""
        values = list(_line_values(self))
        for name, value in changes.items():
            values[_LINE_INDEX[name]] = value
        return _line_of(values)

    def after_fill(self, fill: Fill, at: dt.datetime) -> OrderLineState:
        """The line once `fill` has given it units (or released what it held) at `at`."""
        status = fill.status_after
        return self._with(
            allocated=fill.allocated_after,
            reserved=fill.reserved_after,
            status=status,
            # a line closed by a rejection or a cancellation keeps saying why
            reason=self.reason if status in (LineStatus.REJECTED, LineStatus.CANCELLED) else fill.reason,
            filled_at=self.filled_at or (at if status not in WAITING else None),
        )

    def after_cancelling(self, units: int, code: CancelReason, reason: str) -> OrderLineState:
        """The line once `units` of it are cancelled: what it held reserved goes back to stock."""
        return self._with(
            cancelled=self.cancelled + units,
            reserved=0,
            status=LineStatus.of(
                self.wanted - units, self.allocated, rejected=self.rejected, cancelled=self.cancelled + units
            ),
            reason=reason,
            cancel_reason=code,
        )

    def after_shipping(self, units: int, at: dt.datetime) -> OrderLineState:
        """The line once a shipment carried `units` of it: SHIPPED when all it wants has left."""
        shipped = self.shipped + units
        if shipped >= self.wanted:
            return self._with(shipped=shipped, status=LineStatus.SHIPPED, shipped_at=at)
        return self._with(shipped=shipped)

    def marked_backordered(self) -> OrderLineState:
        """The line of an order placed when it had to wait for stock."""
        return self._with(backordered=True)

    def with_eta(self, expected_ship_date: dt.date | None, basis: str | None) -> OrderLineState:
        """The line with the expected ship date the rules give it now, and what that date rests on."""
        return self._with(expected_ship_date=expected_ship_date, eta_basis=basis)

    def status_after_rejecting(self, units: int) -> LineStatus:
        return LineStatus.of(
            self.wanted - units,
            self.allocated + self.reserved,
            rejected=self.rejected + units,
            cancelled=self.cancelled,
        )

    def _as_queued(self) -> tuple[object, ...]:
        return (
            self.order_id,
            self.line_id,
            self.sku,
            self.status,
            self.ordered,
            self.allocated,
            self.reserved,
            self.rejected,
            self.cancelled,
            self.split,
            self.customer_tier,
            self.shipping_service,
            self.need_by,
            self.order_units,
            self.placed_at,
            self.customer_id,
            self.product_name,
            self.unit_price_minor,
        )

    def queues_as(self, other: OrderLineState) -> bool:
        """Whether `other` waits (or not) in its queue exactly as this line does: the same `as_backorder` and
        status; only its expected date, what it was told or its history may differ."""
        return self._as_queued() == other._as_queued()

    def as_backorder(self) -> Backorder:
        return Backorder(
            order_id=self.order_id,
            line_id=self.line_id,
            sku=self.sku,
            product_name=self.product_name,
            customer_id=self.customer_id,
            customer_tier=self.customer_tier,
            shipping_service=self.shipping_service,
            need_by=self.need_by,
            order_units=self.order_units,
            split=self.split,
            placed_at=self.placed_at,
            quantity=self.wanted,
            allocated=self.allocated,
            reserved=self.reserved,
            unit_price_minor=self.unit_price_minor,
            rejected=self.rejected,
            cancelled=self.cancelled,
        )


# OrderLineState's fields in their order (a row read from the database is made by position).
LINE_FIELDS = tuple(f.name for f in dataclasses.fields(OrderLineState))
_LINE_INDEX = {name: i for i, name in enumerate(LINE_FIELDS)}
_line_values = attrgetter(*LINE_FIELDS)


def _line_by_slots(values: list[Any]) -> OrderLineState:
    """The line with these values, its slots set one by one: a frozen class refuses setattr, not its slots'
    descriptors. Interpreted, this is faster than its `__init__`; compiled, `object.__new__` is refused."""
    line = object.__new__(OrderLineState)
    for put, value in zip(_LINE_SLOTS, values, strict=True):
        put(line, value)
    return line


def _line_by_init(values: list[Any]) -> OrderLineState:
    """The line with these values, by its `__init__`: compiled (mypyc), the fast way."""
    return OrderLineState(*values)


# Compiled, this module is an extension module (README, "Compiled rules").
COMPILED = compiled(__file__)
if COMPILED:
    _line_of = _line_by_init
else:
    _LINE_SLOTS = tuple(getattr(OrderLineState, name).__set__ for name in LINE_FIELDS)
    _line_of = _line_by_slots

interpreted_inits(__file__, OrderLine, Order, Backorder, OrderLineState)
