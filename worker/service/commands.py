"""Commands the worker carries out, built from decoded inbound records and checked against the contract."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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
from worker.service.messages import InvalidEvent, UnexpectedRecord

Record = Mapping[str, Any]


class _LocksNothing:
    @property
    def skus(self) -> frozenset[str]:
        """The SKUs whose stock the command may take or give back: locked before it runs."""
        return frozenset()

    @property
    def orders(self) -> frozenset[str]:
        """Orders the command reads and changes: locked, so that two workers handling events of the same
        order (an order and its cancellation, on different topics) take turns; their SKUs are locked too."""
        return frozenset()


@dataclass(frozen=True)
class PlaceOrder(_LocksNothing):
    event_id: str
    order: Order
    content_hash: bytes

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

    @property
    def skus(self) -> frozenset[str]:
        return frozenset({self.receipt.sku})


@dataclass(frozen=True)
class CancelOrder(_LocksNothing):
    event_id: str
    cancellation: Cancellation
    content_hash: bytes

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

    @property
    def orders(self) -> frozenset[str]:
        return frozenset({self.order_id})


Command = PlaceOrder | ReceiveStock | CancelOrder | SetProductPolicy | ExpectRestock | DispatchShipment


def content_hash(record: Record) -> bytes:
    """A digest of what an event says, leaving out its own id, to recognise the same fact sent twice."""
    body = {k: v for k, v in record.items() if k != "event_id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).digest()


def _text(record: Record, name: str) -> str:
    value = record[name]
    if not isinstance(value, str) or not value.strip():
        raise InvalidEvent(f"{name} must be a non-empty string, got {value!r}")
    return value


def _positive(value: int, name: str) -> int:
    if value <= 0:
        raise InvalidEvent(f"{name} must be > 0, got {value}")
    return value


def _non_negative(value: int, name: str) -> int:
    if value < 0:
        raise InvalidEvent(f"{name} must be >= 0, got {value}")
    return value


def _aware(value: dt.datetime, name: str) -> dt.datetime:
    if value.tzinfo is None:
        raise InvalidEvent(f"{name} must carry a time zone")
    return value


def place_order(record: Record) -> PlaceOrder:
    lines = record["lines"]
    if not lines:
        raise InvalidEvent("order has no lines")
    parsed: list[OrderLine] = []
    for i, line in enumerate(lines):
        where = f"lines[{i}]"
        price = line["unit_price_minor"]
        if price < 0:
            raise InvalidEvent(f"{where}.unit_price_minor must be >= 0, got {price}")
        parsed.append(
            OrderLine(
                line_id=_text(line, "line_id"),
                sku=_text(line, "sku"),
                product_name=line["product_name"],
                quantity=_positive(line["quantity"], f"{where}.quantity"),
                unit_price_minor=price,
            )
        )
    line_ids = [line.line_id for line in parsed]
    if len(set(line_ids)) != len(line_ids):
        raise InvalidEvent(f"line_id values repeat within the order: {line_ids}")
    currency = record["currency"]
    if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha() and currency.isupper()):
        raise InvalidEvent(f"currency must be an ISO 4217 code such as USD, got {currency!r}")
    split = record["split_preference"]
    order = Order(
        order_id=_text(record, "order_id"),
        customer_id=_text(record, "customer_id"),
        customer_tier=CustomerTier(record["customer_tier"]),
        shipping_service=ShippingService(record["shipping_service"]),
        need_by=record["need_by"],
        split_preference=SplitPreference(split) if split is not None else None,
        currency=currency,
        placed_at=_aware(record["occurred_at"], "occurred_at"),
        lines=tuple(parsed),
    )
    return PlaceOrder(event_id=_text(record, "event_id"), order=order, content_hash=content_hash(record))


def receive_stock(record: Record) -> ReceiveStock:
    receipt = StockReceipt(
        receipt_id=_text(record, "receipt_id"),
        sku=_text(record, "sku"),
        quantity=_positive(record["quantity"], "quantity"),
        received_at=_aware(record["occurred_at"], "occurred_at"),
        supplier_id=record["supplier_id"],
        purchase_order_id=record["purchase_order_id"],
    )
    return ReceiveStock(event_id=_text(record, "event_id"), receipt=receipt, content_hash=content_hash(record))


def cancel_order(record: Record) -> CancelOrder:
    line_ids = tuple(dict.fromkeys(record["line_ids"]))  # a line named twice is cancelled once
    if any(not isinstance(line_id, str) or not line_id.strip() for line_id in line_ids):
        raise InvalidEvent(f"line_ids must be non-empty strings, got {list(line_ids)}")
    cancellation = Cancellation(
        order_id=_text(record, "order_id"),
        line_ids=line_ids,
        reason=CancelReason(record["reason"]),
        note=record["note"],
        requested_at=_aware(record["occurred_at"], "occurred_at"),
    )
    return CancelOrder(event_id=_text(record, "event_id"), cancellation=cancellation, content_hash=content_hash(record))


def _optional_positive(record: Record, name: str) -> int | None:
    value = record[name]
    return None if value is None else _positive(value, name)


def set_product_policy(record: Record) -> SetProductPolicy:
    policy = ProductPolicy(
        backorders_allowed=record["backorders_allowed"],
        discontinued=record["discontinued"],
        max_backorder_qty_per_customer=(
            None
            if record["max_backorder_qty_per_customer"] is None
            else _non_negative(record["max_backorder_qty_per_customer"], "max_backorder_qty_per_customer")
        ),
        payment_timing=PaymentTiming(record["payment_timing"]),
        default_split=SplitPreference(record["default_split"]),
        lead_time_days=_optional_positive(record, "lead_time_days"),
        stale_after_days=_optional_positive(record, "stale_after_days"),
    )
    return SetProductPolicy(
        event_id=_text(record, "event_id"),
        sku=_text(record, "sku"),
        policy=policy,
        decided_at=_aware(record["occurred_at"], "occurred_at"),
        content_hash=content_hash(record),
    )


def expect_restock(record: Record) -> ExpectRestock:
    restock = ExpectedReceipt(
        purchase_order_id=_text(record, "purchase_order_id"),
        supplier_id=_text(record, "supplier_id"),
        quantity=_non_negative(record["quantity"], "quantity"),
        expected_date=record["expected_date"],
    )
    return ExpectRestock(
        event_id=_text(record, "event_id"),
        sku=_text(record, "sku"),
        restock=restock,
        decided_at=_aware(record["occurred_at"], "occurred_at"),
        content_hash=content_hash(record),
    )


def dispatch_shipment(record: Record) -> DispatchShipment:
    shipment = _text(record, "shipment_id")
    try:
        uuid.UUID(shipment)
    except ValueError:
        raise InvalidEvent(f"shipment_id must be a shipment id from fulfillment-requested, got {shipment!r}") from None
    return DispatchShipment(
        event_id=_text(record, "event_id"),
        shipment_id=shipment,
        order_id=_text(record, "order_id"),
        carrier=_text(record, "carrier"),
        tracking_number=_text(record, "tracking_number"),
        estimated_delivery=record["estimated_delivery"],
        dispatched_at=_aware(record["occurred_at"], "occurred_at"),
        content_hash=content_hash(record),
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
