"""Commands the worker carries out, built from decoded inbound records and checked against the contract."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from worker.domain.eta import ExpectedReceipt
from worker.domain.model import (
    Cancellation,
    CancelReason,
    CustomerTier,
    Order,
    OrderLine,
    PaymentTiming,
    ShippingService,
    SplitPreference,
    StockReceipt,
)
from worker.domain.policy import ProductPolicy
from worker.service import limits
from worker.service.limits import quote
from worker.service.messages import InvalidEvent, UnexpectedRecord

Record = Mapping[str, Any]


class _LocksNothing:
    kind: ClassVar[str]  # of fact: "order", "receipt", ...
    event_id: str

    @property
    def skus(self) -> frozenset[str]:
        """The SKUs whose stock the command may take or give back: locked before it runs."""
        return frozenset()

    @property
    def orders(self) -> frozenset[str]:
        """Orders the command reads and changes: locked, so that two workers handling events of the same
        order (an order and its cancellation, on different topics) take turns; their SKUs are locked too."""
        return frozenset()

    @property
    def fact(self) -> tuple[str, str]:
        """(kind, natural key): what makes the same fact sent twice recognisable. A command without a
        natural key of its own (a cancellation, a purchase-order line, a policy: later events replace
        earlier ones) is known by its event id."""
        return (self.kind, self.event_id)


@dataclass(frozen=True)
class PlaceOrder(_LocksNothing):
    event_id: str
    order: Order
    content_hash: bytes
    kind: ClassVar[str] = "order"

    @property
    def fact(self) -> tuple[str, str]:
        return (self.kind, self.order.order_id)

    @property
    def orders(self) -> frozenset[str]:
        return frozenset({self.order.order_id})

    @property
    def skus(self) -> frozenset[str]:
        return frozenset(line.sku for line in self.order.lines)


@dataclass(frozen=True)
class ReceiveStock(_LocksNothing):
    event_id: str
    receipt: StockReceipt
    content_hash: bytes
    kind: ClassVar[str] = "receipt"

    @property
    def fact(self) -> tuple[str, str]:
        return (self.kind, self.receipt.receipt_id)

    @property
    def skus(self) -> frozenset[str]:
        return frozenset({self.receipt.sku})


@dataclass(frozen=True)
class CancelOrder(_LocksNothing):
    event_id: str
    cancellation: Cancellation
    content_hash: bytes
    kind: ClassVar[str] = "cancellation"

    @property
    def orders(self) -> frozenset[str]:
        return frozenset({self.cancellation.order_id})


@dataclass(frozen=True)
class SetProductPolicy(_LocksNothing):
    event_id: str
    sku: str
    policy: ProductPolicy
    decided_at: dt.datetime
    content_hash: bytes
    kind: ClassVar[str] = "policy"

    @property
    def skus(self) -> frozenset[str]:
        return frozenset({self.sku})


@dataclass(frozen=True)
class ExpectRestock(_LocksNothing):
    event_id: str
    sku: str
    restock: ExpectedReceipt  # quantity 0: the purchase order line was withdrawn
    decided_at: dt.datetime
    content_hash: bytes
    kind: ClassVar[str] = "restock"

    @property
    def skus(self) -> frozenset[str]:
        return frozenset({self.sku})


@dataclass(frozen=True)
class DispatchShipment(_LocksNothing):
    event_id: str
    shipment_id: str
    order_id: str
    carrier: str
    tracking_number: str
    estimated_delivery: dt.date | None
    dispatched_at: dt.datetime
    content_hash: bytes
    kind: ClassVar[str] = "shipment"

    @property
    def fact(self) -> tuple[str, str]:
        return (self.kind, self.shipment_id)

    @property
    def orders(self) -> frozenset[str]:
        return frozenset({self.order_id})


Command = PlaceOrder | ReceiveStock | CancelOrder | SetProductPolicy | ExpectRestock | DispatchShipment


# Fields a later contract version added, with their defaults: left out of the digest while they hold the
# default, so that a fact accepted from a version-1 writer is recognised when it comes again from a newer one
# (or is read again by a newer reader, which fills in the defaults).
_ADDED_FIELDS: dict[str, object] = {"available_from": None, "max_promise_days": None}


def content_hash(record: Record) -> bytes:
    """A digest of what an event says, leaving out its own id, to recognise the same fact sent twice."""
    body = {k: v for k, v in record.items() if k != "event_id" and not (k in _ADDED_FIELDS and v == _ADDED_FIELDS[k])}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).digest()


def _checked_identifier(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} must be a string, got {quote(value)}")
    problem = limits.identifier_problem(value)
    if problem is not None:
        raise InvalidEvent(f"{name} {problem}, got {quote(value)}")
    return value


def _identifier(record: Record, name: str, where: str = "") -> str:
    return _checked_identifier(record[name], f"{where}{name}")


def _optional_identifier(record: Record, name: str) -> str | None:
    return None if record[name] is None else _identifier(record, name)


def _free_text(record: Record, name: str, max_length: int, where: str = "") -> str:
    value = record[name]
    if not isinstance(value, str):
        raise InvalidEvent(f"{where}{name} must be a string, got {quote(value)}")
    problem = limits.text_problem(value, max_length)
    if problem is not None:
        raise InvalidEvent(f"{where}{name} {problem}, got {quote(value)}")
    return value


def _number(value: object, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidEvent(f"{name} must be an integer, got {quote(value)}")
    if not low <= value <= high:
        raise InvalidEvent(f"{name} must be from {low:,} to {high:,}, got {value:,}")
    return value


def _optional_number(record: Record, name: str, low: int, high: int) -> int | None:
    value = record[name]
    return None if value is None else _number(value, name, low, high)


def _date(value: object, name: str) -> dt.date:
    if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
        raise InvalidEvent(f"{name} must be a date, got {quote(value)}")
    if (problem := limits.date_problem(value)) is not None:
        raise InvalidEvent(f"{name} {problem}, got {value}")
    return value


def _optional_date(record: Record, name: str) -> dt.date | None:
    value = record[name]
    return None if value is None else _date(value, name)


_EARLIEST_TIME = dt.datetime.combine(limits.EARLIEST_DATE, dt.time(), dt.UTC)
_LATEST_TIME = dt.datetime.combine(limits.LATEST_DATE, dt.time.max, dt.UTC)


def _aware(value: object, name: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise InvalidEvent(f"{name} must be a time, got {quote(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidEvent(f"{name} must carry a time zone")
    try:
        within = _EARLIEST_TIME <= value <= _LATEST_TIME
    except OverflowError:  # a time near year 1 or 9999 with an offset that takes it past the calendar
        within = False
    if not within:
        raise InvalidEvent(
            f"{name} must be from {_EARLIEST_TIME.isoformat()} to {_LATEST_TIME.isoformat()}, got {value}"
        )
    return value


def place_order(record: Record) -> PlaceOrder:
    lines = record["lines"]
    if not lines:
        raise InvalidEvent("order has no lines")
    if len(lines) > limits.MAX_LINES_PER_ORDER:
        raise InvalidEvent(f"order has {len(lines):,} lines, more than {limits.MAX_LINES_PER_ORDER:,}")
    parsed: list[OrderLine] = []
    for i, line in enumerate(lines):
        where = f"lines[{i}]."
        parsed.append(
            OrderLine(
                line_id=_identifier(line, "line_id", where),
                sku=_identifier(line, "sku", where),
                product_name=_free_text(line, "product_name", limits.MAX_PRODUCT_NAME_LENGTH, where),
                quantity=_number(line["quantity"], f"{where}quantity", 1, limits.MAX_QUANTITY),
                unit_price_minor=_number(
                    line["unit_price_minor"], f"{where}unit_price_minor", 0, limits.MAX_UNIT_PRICE_MINOR
                ),
            )
        )
    repeated = [line_id for line_id, count in Counter(line.line_id for line in parsed).items() if count > 1]
    if repeated:
        raise InvalidEvent(f"line_id values repeat within the order: {quote(repeated)}")
    currency = record["currency"]
    if not isinstance(currency, str) or currency not in limits.CURRENCIES:
        raise InvalidEvent(f"currency must be an active ISO 4217 code such as USD, got {quote(currency)}")
    split = record["split_preference"]
    order = Order(
        order_id=_identifier(record, "order_id"),
        customer_id=_identifier(record, "customer_id"),
        customer_tier=CustomerTier(record["customer_tier"]),
        shipping_service=ShippingService(record["shipping_service"]),
        need_by=_optional_date(record, "need_by"),
        split_preference=SplitPreference(split) if split is not None else None,
        currency=currency,
        placed_at=_aware(record["occurred_at"], "occurred_at"),
        lines=tuple(parsed),
    )
    return PlaceOrder(event_id=_identifier(record, "event_id"), order=order, content_hash=content_hash(record))


def receive_stock(record: Record) -> ReceiveStock:
    receipt = StockReceipt(
        receipt_id=_identifier(record, "receipt_id"),
        sku=_identifier(record, "sku"),
        quantity=_number(record["quantity"], "quantity", 1, limits.MAX_QUANTITY),
        received_at=_aware(record["occurred_at"], "occurred_at"),
        supplier_id=_optional_identifier(record, "supplier_id"),
        purchase_order_id=_optional_identifier(record, "purchase_order_id"),
    )
    return ReceiveStock(event_id=_identifier(record, "event_id"), receipt=receipt, content_hash=content_hash(record))


def cancel_order(record: Record) -> CancelOrder:
    named = record["line_ids"]
    if len(named) > limits.MAX_LINE_IDS_PER_CANCELLATION:
        raise InvalidEvent(
            f"line_ids names {len(named):,} lines, more than {limits.MAX_LINE_IDS_PER_CANCELLATION:,}"
            " (an empty list cancels every open line)"
        )
    for i, line_id in enumerate(named):
        _checked_identifier(line_id, f"line_ids[{i}]")
    note = record["note"]
    cancellation = Cancellation(
        order_id=_identifier(record, "order_id"),
        line_ids=tuple(dict.fromkeys(named)),  # a line named twice is cancelled once
        reason=CancelReason(record["reason"]),
        note=None if note is None else _free_text(record, "note", limits.MAX_NOTE_LENGTH),
        requested_at=_aware(record["occurred_at"], "occurred_at"),
    )
    return CancelOrder(
        event_id=_identifier(record, "event_id"), cancellation=cancellation, content_hash=content_hash(record)
    )


def set_product_policy(record: Record) -> SetProductPolicy:
    policy = ProductPolicy(
        backorders_allowed=record["backorders_allowed"],
        discontinued=record["discontinued"],
        max_backorder_qty_per_customer=_optional_number(
            record, "max_backorder_qty_per_customer", 0, limits.MAX_BACKORDER_QTY_PER_CUSTOMER
        ),
        payment_timing=PaymentTiming(record["payment_timing"]),
        default_split=SplitPreference(record["default_split"]),
        lead_time_days=_optional_number(record, "lead_time_days", 1, limits.MAX_POLICY_DAYS),
        stale_after_days=_optional_number(record, "stale_after_days", 1, limits.MAX_POLICY_DAYS),
        available_from=_optional_date(record, "available_from"),
        max_promise_days=_optional_number(record, "max_promise_days", 1, limits.MAX_POLICY_DAYS),
    )
    return SetProductPolicy(
        event_id=_identifier(record, "event_id"),
        sku=_identifier(record, "sku"),
        policy=policy,
        decided_at=_aware(record["occurred_at"], "occurred_at"),
        content_hash=content_hash(record),
    )


def expect_restock(record: Record) -> ExpectRestock:
    restock = ExpectedReceipt(
        purchase_order_id=_identifier(record, "purchase_order_id"),
        supplier_id=_identifier(record, "supplier_id"),
        quantity=_number(record["quantity"], "quantity", 0, limits.MAX_QUANTITY),
        expected_date=_date(record["expected_date"], "expected_date"),
    )
    return ExpectRestock(
        event_id=_identifier(record, "event_id"),
        sku=_identifier(record, "sku"),
        restock=restock,
        decided_at=_aware(record["occurred_at"], "occurred_at"),
        content_hash=content_hash(record),
    )


def dispatch_shipment(record: Record) -> DispatchShipment:
    given = _identifier(record, "shipment_id")
    try:
        # In the spelling fulfillment-requested gave it (a warehouse may send it back in upper case, or in braces):
        # the shipment found, the fact remembered and the ids of what it causes are the same whatever the spelling.
        shipment = str(uuid.UUID(given))
    except ValueError:
        raise InvalidEvent(
            f"shipment_id must be a shipment id from fulfillment-requested, got {quote(given)}"
        ) from None
    return DispatchShipment(
        event_id=_identifier(record, "event_id"),
        shipment_id=shipment,
        order_id=_identifier(record, "order_id"),
        carrier=_identifier(record, "carrier"),
        tracking_number=_identifier(record, "tracking_number"),
        estimated_delivery=_optional_date(record, "estimated_delivery"),
        dispatched_at=_aware(record["occurred_at"], "occurred_at"),
        content_hash=content_hash({**record, "shipment_id": shipment}),
    )


BUILDERS: dict[str, Callable[[Record], Command]] = {
    "backorder.OrderCreated": place_order,
    "backorder.InventoryReceived": receive_stock,
    "backorder.OrderCancelled": cancel_order,
    "backorder.ProductPolicy": set_product_policy,
    "backorder.RestockExpected": expect_restock,
    "backorder.ShipmentDispatched": dispatch_shipment,
}


def command_for(record_name: str, expected: str, record: Record) -> Command:
    """The command a record on a topic asks for; `expected` is the record the contract puts there."""
    if record_name != expected:
        raise UnexpectedRecord(f"expected {expected} on this topic, got {record_name}")
    return BUILDERS[record_name](record)
