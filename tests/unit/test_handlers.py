"""Handlers against an in-memory unit of work: what each story emits."""

from __future__ import annotations

import datetime as dt

import pytest

from tests import factories
from tests.unit.fakes import FakeUnitOfWork
from worker.domain.events import (
    BackorderStatusChanged,
    CustomerNotification,
    FulfillmentRequested,
    NotificationType,
)
from worker.domain.model import LineStatus, PaymentTiming, ShopPolicy
from worker.service.commands import place_order, receive_stock
from worker.service.handlers import Outcome, handle
from worker.service.messages import ConflictingDuplicate

NOW = dt.datetime(2026, 1, 20, 12, tzinfo=dt.UTC)
SHOP = ShopPolicy()


def of(uow: FakeUnitOfWork, kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in uow.state.outbox if isinstance(e, kind)]


def test_an_order_in_stock_ships_at_once_without_a_backorder_notice() -> None:
    uow = FakeUnitOfWork()
    uow.lock_stock(["SKU"])
    handle(receive_stock(factories.receipt("R-1", "SKU", 10)), uow, SHOP, NOW)
    handle(place_order(factories.order("1", "2026-01-05", [("SKU", 4)])), uow, SHOP, NOW)
    [shipment] = of(uow, FulfillmentRequested)
    assert (shipment.order_id, shipment.partial, [ln.quantity for ln in shipment.lines]) == ("1", False, [4])
    assert of(uow, CustomerNotification) == []
    assert [s.status for s in of(uow, BackorderStatusChanged)] == [LineStatus.ALLOCATED]
    assert uow.available("SKU") == 6


def test_an_order_partly_in_stock_ships_what_is_there_and_confirms_the_rest() -> None:
    uow = FakeUnitOfWork()
    uow.lock_stock(["SKU", "OTHER"])
    handle(receive_stock(factories.receipt("R-1", "SKU", 3)), uow, SHOP, NOW)
    handle(place_order(factories.order("1", "2026-01-05", [("SKU", 5), ("OTHER", 2)])), uow, SHOP, NOW)
    [shipment] = of(uow, FulfillmentRequested)
    assert shipment.partial is True and [(ln.sku, ln.quantity) for ln in shipment.lines] == [("SKU", 3)]
    [notice] = of(uow, CustomerNotification)
    assert notice.type is NotificationType.BACKORDER_CONFIRMED and notice.cancel_allowed
    assert [(ln.sku, ln.quantity, ln.status) for ln in notice.lines] == [
        ("SKU", 2, LineStatus.PARTIALLY_ALLOCATED),
        ("OTHER", 2, LineStatus.BACKORDERED),
    ]


def test_a_new_order_never_jumps_the_queue() -> None:
    uow = FakeUnitOfWork()
    uow.lock_stock(["SKU"])
    handle(place_order(factories.order("old", "2026-01-01", [("SKU", 5)])), uow, SHOP, NOW)
    uow.state.available["SKU"] = 5  # units on hand while an older line waits: the older line comes first
    handle(place_order(factories.order("new", "2026-01-09", [("SKU", 5)])), uow, SHOP, NOW)
    assert [(s.order_id, s.partial) for s in of(uow, FulfillmentRequested)] == [("old", False)]
    assert uow.state.line_state[("new", "L1")] == (0, LineStatus.BACKORDERED)


def test_payment_at_shipment_asks_the_shipping_service_to_capture_it() -> None:
    uow = FakeUnitOfWork()
    uow.lock_stock(["SKU"])
    handle(place_order(factories.order("1", "2026-01-01", [("SKU", 1)])), uow, SHOP, NOW)
    handle(receive_stock(factories.receipt("R", "SKU", 1)), uow, ShopPolicy(PaymentTiming.AT_SHIPMENT), NOW)
    assert [s.capture_payment for s in of(uow, FulfillmentRequested)] == [True]


def test_the_same_fact_twice_is_a_duplicate_and_different_content_a_conflict() -> None:
    uow = FakeUnitOfWork()
    uow.lock_stock(["SKU"])
    record = factories.order("1", "2026-01-01", [("SKU", 1)])
    assert handle(place_order(record), uow, SHOP, NOW) is Outcome.PROCESSED
    emitted = len(uow.state.outbox)
    assert handle(place_order({**record, "event_id": "resent"}), uow, SHOP, NOW) is Outcome.DUPLICATE
    assert len(uow.state.outbox) == emitted
    with pytest.raises(ConflictingDuplicate):
        handle(place_order(factories.order("1", "2026-01-01", [("SKU", 2)])), uow, SHOP, NOW)


def test_event_ids_depend_only_on_what_caused_them() -> None:
    def run() -> list[str]:
        uow = FakeUnitOfWork()
        uow.lock_stock(["SKU"])
        handle(place_order(factories.order("1", "2026-01-01", [("SKU", 3)])), uow, SHOP, NOW)
        handle(receive_stock(factories.receipt("R", "SKU", 3)), uow, SHOP, NOW + dt.timedelta(hours=1))
        return [e.event_id for e in uow.state.outbox]

    first, second = run(), run()
    assert first == second
    assert len(set(first)) == len(first)
