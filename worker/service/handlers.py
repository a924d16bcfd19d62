"""Handlers: one function per command, each working through a unit of work and emitting events.

A handler either applies its command completely or, for a fact it has seen before, does nothing
(`Outcome.DUPLICATE`). Every event it emits gets an id derived from the command's natural key, so
the same fact handled twice can never produce two different events.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from enum import StrEnum
from itertools import groupby

import structlog

from worker.domain.allocation import allocate
from worker.domain.events import (
    BackorderStatusChanged,
    CustomerNotification,
    FulfillmentLine,
    FulfillmentRequested,
    NotificationLine,
    NotificationType,
    OutboundEvent,
    event_id,
)
from worker.domain.model import Fill, LineStatus, ShippingService, ShopPolicy
from worker.service.commands import Command, PlaceOrder, ReceiveStock
from worker.service.messages import ConflictingDuplicate
from worker.service.ports import Seen, UnitOfWork

log = structlog.get_logger(__name__)


class Outcome(StrEnum):
    PROCESSED = "processed"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"


def handle(command: Command, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime) -> Outcome:
    if isinstance(command, PlaceOrder):
        return place_order(command, uow, shop, now)
    return receive_stock(command, uow, shop, now)


def place_order(command: PlaceOrder, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime) -> Outcome:
    order = command.order
    if not _first_time(uow, "order", order.order_id, command.event_id, command.content_hash):
        return Outcome.DUPLICATE
    uow.add_order(order, command.event_id)
    cause = f"order-created/{order.order_id}"
    fills = _allocate(uow, sorted(command.skus), cause, now)
    own_fills = [f for f in fills if f.backorder.order_id == order.order_id]
    earlier_fills = [f for f in fills if f.backorder.order_id != order.order_id]
    open_units = uow.open_units({order.order_id} | {f.backorder.order_id for f in fills})

    allocated = {f.backorder.line_id: f.quantity for f in own_fills}
    events: list[OutboundEvent] = []
    if own_fills:
        events.append(
            _fulfillment(
                cause,
                command.event_id,
                order.order_id,
                order.customer_id,
                order.shipping_service,
                own_fills,
                open_units,
                shop,
                now,
            )
        )
    waiting: list[NotificationLine] = []
    for line in order.lines:
        got = allocated.get(line.line_id, 0)
        status = LineStatus.of(line.quantity, got)
        events.append(_status(cause, order.order_id, line.line_id, line.sku, line.quantity, got, now))
        if got < line.quantity:
            waiting.append(NotificationLine(line.line_id, line.sku, line.product_name, line.quantity - got, status))
    if waiting:
        log.info("backordered", order_id=order.order_id, lines=len(waiting), units=sum(w.quantity for w in waiting))
        events.append(
            CustomerNotification(
                event_id=event_id("customer-notification", cause, NotificationType.BACKORDER_CONFIRMED),
                occurred_at=now,
                order_id=order.order_id,
                customer_id=order.customer_id,
                type=NotificationType.BACKORDER_CONFIRMED,
                lines=tuple(waiting),
                cancel_allowed=True,
            )
        )
    # Units on hand go to older waiting lines first; normally there are none when stock is on hand.
    events.extend(_announce_fills(cause, command.event_id, earlier_fills, open_units, shop, now))
    uow.emit(events)
    return Outcome.PROCESSED


def receive_stock(command: ReceiveStock, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime) -> Outcome:
    receipt = command.receipt
    if not _first_time(uow, "receipt", receipt.receipt_id, command.event_id, command.content_hash):
        return Outcome.DUPLICATE
    uow.add_receipt(receipt, command.event_id)
    cause = f"inventory-received/{receipt.receipt_id}"
    fills = _allocate(uow, [receipt.sku], cause, now)
    open_units = uow.open_units({f.backorder.order_id for f in fills})
    uow.emit(_announce_fills(cause, command.event_id, fills, open_units, shop, now))
    return Outcome.PROCESSED


def _first_time(uow: UnitOfWork, kind: str, key: str, event_id: str, content_hash: bytes) -> bool:
    """False for a fact already accepted; a conflict if the same key now says something else."""
    seen = uow.remember(kind, key, event_id, content_hash)
    if seen is Seen.DIFFERENT:
        raise ConflictingDuplicate(f"{kind} {key} was accepted before with different content")
    return seen is Seen.NEW


def shipment_id(cause: str, order_id: str) -> str:
    return event_id("shipment", cause, order_id)


def _allocate(uow: UnitOfWork, skus: Iterable[str], cause: str, now: dt.datetime) -> list[Fill]:
    fills: list[Fill] = []
    for sku in skus:
        units = uow.available(sku)
        if units == 0:
            continue
        allocation = allocate(uow.waiting_lines(sku), units)
        if allocation.fills:
            shipments = {f.backorder.order_id: shipment_id(cause, f.backorder.order_id) for f in allocation.fills}
            uow.record_fills(sku, allocation.fills, shipments, cause, now)
            log.info(
                "allocated",
                sku=sku,
                cause=cause,
                units=allocation.units_allocated,
                units_left=allocation.units_left,
                lines=len(allocation.fills),
                first=[f"{f.backorder.order_id}/{f.backorder.line_id}:{f.quantity}" for f in allocation.fills[:10]],
            )
            fills.extend(allocation.fills)
    return fills


def _announce_fills(
    cause: str,
    caused_by: str,
    fills: Sequence[Fill],
    open_units: dict[str, int],
    shop: ShopPolicy,
    now: dt.datetime,
) -> list[OutboundEvent]:
    """For each order that waited: one shipment, a status per filled line, and the good news."""
    events: list[OutboundEvent] = []
    ordered = sorted(fills, key=lambda f: (f.backorder.order_id, f.backorder.line_id))
    for order_id, group in groupby(ordered, key=lambda f: f.backorder.order_id):
        order_fills = list(group)
        first = order_fills[0].backorder
        events.append(
            _fulfillment(
                cause,
                caused_by,
                order_id,
                first.customer_id,
                first.shipping_service,
                order_fills,
                open_units,
                shop,
                now,
            )
        )
        for f in order_fills:
            b = f.backorder
            events.append(_status(cause, order_id, b.line_id, b.sku, b.quantity, f.allocated_after, now))
        events.append(
            CustomerNotification(
                event_id=event_id("customer-notification", cause, order_id, NotificationType.BACKORDER_ALLOCATED),
                occurred_at=now,
                order_id=order_id,
                customer_id=first.customer_id,
                type=NotificationType.BACKORDER_ALLOCATED,
                lines=tuple(
                    NotificationLine(
                        f.backorder.line_id,
                        f.backorder.sku,
                        f.backorder.product_name,
                        f.quantity,
                        f.status_after,
                    )
                    for f in order_fills
                ),
                cancel_allowed=open_units.get(order_id, 0) > 0,
            )
        )
    return events


def _fulfillment(
    cause: str,
    caused_by: str,
    order_id: str,
    customer_id: str,
    service: ShippingService,
    fills: Sequence[Fill],
    open_units: dict[str, int],
    shop: ShopPolicy,
    now: dt.datetime,
) -> FulfillmentRequested:
    return FulfillmentRequested(
        event_id=event_id("fulfillment-requested", cause, order_id),
        occurred_at=now,
        shipment_id=shipment_id(cause, order_id),
        order_id=order_id,
        customer_id=customer_id,
        shipping_service=service,
        lines=tuple(FulfillmentLine(f.backorder.line_id, f.backorder.sku, f.quantity) for f in fills),
        partial=open_units.get(order_id, 0) > 0,
        capture_payment=shop.capture_payment_at_shipment,
        caused_by_event_id=caused_by,
    )


def _status(
    cause: str, order_id: str, line_id: str, sku: str, ordered: int, allocated: int, now: dt.datetime
) -> BackorderStatusChanged:
    return BackorderStatusChanged(
        event_id=event_id("backorder-status", cause, order_id, line_id),
        occurred_at=now,
        order_id=order_id,
        line_id=line_id,
        sku=sku,
        status=LineStatus.of(ordered, allocated),
        quantity_ordered=ordered,
        quantity_allocated=allocated,
        quantity_backordered=ordered - allocated,
    )
