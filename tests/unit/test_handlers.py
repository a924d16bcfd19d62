"""Handlers against an in-memory unit of work: what each story emits, and invariants over many stories."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import examples, factories
from tests.unit.fakes import FakeUnitOfWork, handle_record
from worker.domain.allocation import ShipCompleteMode
from worker.domain.eta import UnreliableSupplier
from worker.domain.events import (
    BackorderStatusChanged,
    CustomerNotification,
    FulfillmentRequested,
    NotificationType,
)
from worker.domain.model import CancelReason, LineStatus, OrderOutcome
from worker.domain.policy import ProductPolicy, ShipCompleteScope, ShopPolicy, held_until
from worker.service.handlers import Outcome, sweep
from worker.service.messages import ConflictingDuplicate

NOW = dt.datetime(2026, 1, 20, 12, tzinfo=dt.UTC)
SHOP = ShopPolicy()


def of(uow: FakeUnitOfWork, kind: type) -> list[Any]:
    return [e for e in uow.state.outbox if isinstance(e, kind)]


def shipped(uow: FakeUnitOfWork) -> list[tuple[str, int]]:
    return [(s.order_id, sum(line.quantity for line in s.lines)) for s in of(uow, FulfillmentRequested)]


def world(*skus: str) -> FakeUnitOfWork:
    uow = FakeUnitOfWork()
    uow.lock_stock(skus or ["SKU"])
    return uow


def run(uow: FakeUnitOfWork, record: dict[str, Any], shop: ShopPolicy = SHOP, now: dt.datetime = NOW) -> Outcome:
    return handle_record(uow, record, shop, now)


cancel = factories.cancellation
policy = factories.policy


# ------------------------------------------------------------------------------------------ FIFO basics


def test_an_order_in_stock_ships_at_once_without_a_backorder_notice() -> None:
    uow = world()
    run(uow, factories.receipt("R-1", "SKU", 10))
    run(uow, factories.order("1", "2026-01-05", [("SKU", 4)]))
    [shipment] = of(uow, FulfillmentRequested)
    assert (shipment.order_id, shipment.partial, [ln.quantity for ln in shipment.lines]) == ("1", False, [4])
    assert of(uow, CustomerNotification) == []
    assert [s.status for s in of(uow, BackorderStatusChanged)] == [LineStatus.ALLOCATED]
    assert uow.available("SKU") == 6


def test_a_shipment_id_sent_back_in_another_spelling_is_that_shipment_once() -> None:
    # A warehouse system may write the id in upper case, or in braces (.NET's default): the shipment is found by
    # its value, as PostgreSQL finds it, and the same dispatch in the first spelling after it is its duplicate.
    uow = world()
    run(uow, factories.receipt("R-1", "SKU", 5))
    run(uow, factories.order("O-1", "2026-01-10", [("SKU", 2)]))
    [request] = of(uow, FulfillmentRequested)
    dispatch = factories.shipment("O-1", "{" + request.shipment_id.upper() + "}")

    assert run(uow, dispatch) is Outcome.PROCESSED
    assert run(uow, {**dispatch, "event_id": "again", "shipment_id": request.shipment_id}) is Outcome.DUPLICATE
    assert uow.state.lines[("O-1", "L1")].status is LineStatus.SHIPPED
    [told] = [n for n in of(uow, CustomerNotification) if n.type is NotificationType.ORDER_SHIPPED]
    assert [(line.line_id, line.quantity) for line in told.lines] == [("L1", 2)]


def test_an_order_partly_in_stock_ships_what_is_there_and_confirms_the_rest() -> None:
    uow = world("SKU", "OTHER")
    run(uow, factories.receipt("R-1", "SKU", 3))
    run(uow, factories.order("1", "2026-01-05", [("SKU", 5), ("OTHER", 2)]))
    [shipment] = of(uow, FulfillmentRequested)
    assert shipment.partial is True and [(ln.sku, ln.quantity) for ln in shipment.lines] == [("SKU", 3)]
    [notice] = of(uow, CustomerNotification)
    assert notice.type is NotificationType.BACKORDER_CONFIRMED and notice.cancel_allowed
    assert [(ln.sku, ln.quantity, ln.status) for ln in notice.lines] == [
        ("SKU", 2, LineStatus.PARTIALLY_ALLOCATED),
        ("OTHER", 2, LineStatus.BACKORDERED),
    ]


def test_a_new_order_never_jumps_the_queue() -> None:
    uow = world()
    run(uow, factories.order("old", "2026-01-01", [("SKU", 5)]))
    uow.state.available["SKU"] = 5  # units on hand while an older line waits: the older line comes first
    run(uow, factories.order("new", "2026-01-09", [("SKU", 5)]))
    assert shipped(uow) == [("old", 5)]
    assert uow.state.lines[("new", "L1")].status is LineStatus.BACKORDERED


def test_the_same_fact_twice_is_a_duplicate_and_different_content_a_conflict() -> None:
    uow = world()
    record = factories.order("1", "2026-01-01", [("SKU", 1)])
    assert run(uow, record) is Outcome.PROCESSED
    emitted = len(uow.state.outbox)
    assert run(uow, {**record, "event_id": "resent"}) is Outcome.DUPLICATE
    assert len(uow.state.outbox) == emitted
    with pytest.raises(ConflictingDuplicate):
        run(uow, factories.order("1", "2026-01-01", [("SKU", 2)]))


def test_event_ids_depend_only_on_what_caused_them() -> None:
    def story() -> list[str]:
        uow = world()
        run(uow, factories.order("1", "2026-01-01", [("SKU", 3)]))
        run(uow, factories.receipt("R", "SKU", 3), now=NOW + dt.timedelta(hours=1))
        return [e.event_id for e in uow.state.outbox]

    first, second = story(), story()
    assert first == second
    assert len(set(first)) == len(first)


# ------------------------------------------------------------------------------------------ priority


@pytest.mark.parametrize(
    "fields, why",
    [
        ({"customer_tier": "VIP"}, "rank 3 vip"),
        ({"shipping_service": "EXPEDITED"}, "rank 2 expedited"),
        ({"need_by": dt.date(2026, 1, 22)}, "rank 1 need_by"),
    ],
)
def test_a_priority_order_placed_later_is_filled_first(fields: dict[str, Any], why: str) -> None:
    uow = world()
    run(uow, factories.order("std-1", "2026-01-10", [("SKU", 2)]))
    run(uow, factories.order("std-2", "2026-01-11", [("SKU", 2)]))
    run(uow, factories.order("priority", "2026-01-15", [("SKU", 2)], **fields))
    run(uow, factories.receipt("R", "SKU", 2))
    assert shipped(uow) == [("priority", 2)]
    [status] = [s for s in of(uow, BackorderStatusChanged) if s.order_id == "priority" and s.quantity_allocated]
    assert status.reason.startswith(why)


def test_a_need_by_order_beats_expedited_and_vip() -> None:
    uow = world()
    run(uow, factories.order("vip", "2026-01-10", [("SKU", 1)], customer_tier="VIP"))
    run(uow, factories.order("exp", "2026-01-11", [("SKU", 1)], shipping_service="EXPEDITED"))
    run(uow, factories.order("need", "2026-01-15", [("SKU", 1)], need_by=dt.date(2026, 1, 21)))
    run(uow, factories.receipt("R", "SKU", 2))
    assert shipped(uow) == [("exp", 1), ("need", 1)]


def test_a_standard_order_past_the_starvation_age_beats_a_new_vip() -> None:
    uow = world()
    run(uow, factories.order("old", "2025-12-20", [("SKU", 1)]))  # 31 days before NOW
    run(uow, factories.order("vip", "2026-01-19", [("SKU", 1)], customer_tier="VIP"))
    run(uow, factories.receipt("R", "SKU", 1))
    assert shipped(uow) == [("old", 1)]


# ------------------------------------------------------------------------------------------ split


def test_ship_complete_waits_and_ships_together_while_available_now_ships_in_parts() -> None:
    uow = world("A", "B")
    run(uow, factories.receipt("RA", "A", 3))
    run(uow, factories.receipt("RB", "B", 3))
    run(uow, factories.order("complete", "2026-01-10", [("A", 5)], split_preference="SHIP_COMPLETE"))
    run(uow, factories.order("now", "2026-01-10", [("B", 5)], split_preference="SHIP_AVAILABLE_NOW"))
    assert shipped(uow) == [("now", 3)]
    assert uow.state.lines[("complete", "L1")].reserved == 3
    assert uow.available("A") == 0  # reserved units are not available to others
    run(uow, factories.receipt("RA2", "A", 2))
    run(uow, factories.receipt("RB2", "B", 2))
    assert shipped(uow) == [("now", 3), ("complete", 5), ("now", 2)]


def test_order_scope_holds_a_complete_line_until_the_whole_order_can_ship() -> None:
    shop = dataclasses.replace(SHOP, ship_complete_scope=ShipCompleteScope.ORDER)
    uow = world("A", "B")
    run(uow, factories.receipt("RA", "A", 2), shop)
    run(uow, factories.order("1", "2026-01-10", [("A", 2), ("B", 1)], split_preference="SHIP_COMPLETE"), shop)
    assert shipped(uow) == []
    assert uow.state.lines[("1", "L1")].held
    run(uow, factories.receipt("RB", "B", 1), shop)
    [shipment] = of(uow, FulfillmentRequested)
    assert sorted((ln.sku, ln.quantity) for ln in shipment.lines) == [("A", 2), ("B", 1)]
    assert shipment.partial is False


def test_fill_mode_lets_a_later_line_use_units_the_head_cannot_complete_with() -> None:
    shop = dataclasses.replace(SHOP, ship_complete_mode=ShipCompleteMode.FILL)
    uow = world()
    run(uow, factories.order("big", "2026-01-10", [("SKU", 5)], split_preference="SHIP_COMPLETE"), shop)
    run(uow, factories.order("small", "2026-01-11", [("SKU", 2)]), shop)
    run(uow, factories.receipt("R", "SKU", 3), shop)
    assert shipped(uow) == [("small", 2)]
    assert uow.available("SKU") == 1


# ------------------------------------------------------------------------------------------ policy


def test_a_discontinued_sku_rejects_the_short_part_and_ships_what_is_in_stock() -> None:
    uow = world()
    run(uow, policy("SKU", discontinued=True))
    run(uow, factories.receipt("R", "SKU", 3))
    run(uow, factories.order("1", "2026-01-10", [("SKU", 5)]))
    assert shipped(uow) == [("1", 3)]
    [status] = of(uow, BackorderStatusChanged)
    assert (status.status, status.quantity_allocated, status.quantity_backordered) == (LineStatus.REJECTED, 3, 0)
    assert "2 of 5 rejected: discontinued" in status.reason
    [notice] = of(uow, CustomerNotification)
    assert notice.type is NotificationType.BACKORDER_REJECTED
    assert [(ln.quantity, ln.status) for ln in notice.lines] == [(2, LineStatus.REJECTED)]


def test_the_cap_counts_every_open_backorder_of_the_customer_for_the_sku() -> None:
    uow = world()
    run(uow, policy("SKU", max_backorder_qty_per_customer=5))
    run(uow, factories.order("1", "2026-01-10", [("SKU", 3)], customer_id="C"))
    run(uow, factories.order("2", "2026-01-11", [("SKU", 4)], customer_id="C"))
    line = uow.state.lines[("2", "L1")]
    assert (line.rejected, line.wanted) == (2, 2)
    assert "over the limit of 5 backordered per customer (3 already waiting)" in (line.reason or "")


def test_payment_at_shipment_asks_the_shipping_service_to_capture_it() -> None:
    uow = world()
    run(uow, policy("SKU", payment_timing="AT_SHIPMENT"))
    run(uow, factories.order("1", "2026-01-01", [("SKU", 1)]))
    run(uow, factories.receipt("R", "SKU", 1))
    assert [s.capture_payment for s in of(uow, FulfillmentRequested)] == [True]


def test_an_older_policy_does_not_replace_a_newer_one() -> None:
    uow = world()
    run(uow, policy("SKU", discontinued=True))
    run(uow, policy("SKU", "2025-12-31"))
    assert uow.policy("SKU") == ProductPolicy(discontinued=True)


# ------------------------------------------------------------------------------------------ cancellation


def test_a_cancellation_releases_reserved_units_to_the_next_line_at_once() -> None:
    uow = world()
    run(uow, factories.receipt("R", "SKU", 3))
    run(uow, factories.order("holder", "2026-01-10", [("SKU", 5)], split_preference="SHIP_COMPLETE"))
    run(uow, factories.order("next", "2026-01-11", [("SKU", 3)]))
    assert shipped(uow) == []
    run(uow, cancel("holder"))
    assert shipped(uow) == [("next", 3)]
    holder = [s for s in of(uow, BackorderStatusChanged) if s.order_id == "holder"]
    # Contract 1.1: the 3 units set aside are reserved, not allocated (nothing was released to shipping).
    assert [(s.quantity_allocated, s.quantity_reserved, s.quantity_backordered) for s in holder[:-1]] == [(0, 3, 2)]
    cancelled = holder[-1]
    assert cancelled.status is LineStatus.CANCELLED and "refund due" in (cancelled.reason or "")
    assert cancelled.cancel_reason is CancelReason.CUSTOMER_REQUEST
    assert (cancelled.quantity_allocated, cancelled.quantity_reserved, cancelled.quantity_backordered) == (0, 0, 0)
    [notice] = [n for n in of(uow, CustomerNotification) if n.type is NotificationType.BACKORDER_CANCELLED]
    assert [(ln.quantity, ln.status) for ln in notice.lines] == [(5, LineStatus.CANCELLED)]


def test_cancelling_a_cancelled_line_again_is_not_reported_as_cancelled() -> None:
    # Contract 1.1: a cancellation that changed nothing is never reported as CANCELLED; the line's CANCELLED
    # (with its reason) was sent when it was cancelled, and nothing else about it is news.
    uow = world()
    run(uow, factories.order("1", "2026-01-10", [("SKU", 2)]))
    run(uow, cancel("1", "L1"))
    before = len(uow.state.outbox)
    run(uow, cancel("1", "L1", reason="MERCHANT"))
    assert uow.state.outbox[before:] == []
    assert uow.state.lines[("1", "L1")].cancel_reason is CancelReason.CUSTOMER_REQUEST


def test_cancelling_an_allocated_line_is_answered_not_applied() -> None:
    uow = world()
    run(uow, factories.receipt("R", "SKU", 2))
    run(uow, factories.order("1", "2026-01-10", [("SKU", 2)]))
    run(uow, cancel("1", "L1"))
    answer = of(uow, BackorderStatusChanged)[-1]
    assert (answer.status, answer.reason) == (LineStatus.ALLOCATED, "not cancelled: already allocated")


def test_a_cancellation_before_its_order_is_kept_and_applied_when_the_order_arrives() -> None:
    uow = world()
    run(uow, cancel("early"))
    [answer] = of(uow, BackorderStatusChanged)
    assert (answer.status, answer.line_id, answer.sku) == (LineStatus.CANCEL_PENDING, "", "")
    assert "order not known yet" in (answer.reason or "")
    run(uow, factories.receipt("R", "SKU", 5))
    run(uow, factories.order("early", "2026-01-10", [("SKU", 2)]))
    assert shipped(uow) == []
    assert uow.state.lines[("early", "L1")].status is LineStatus.CANCELLED
    assert uow.available("SKU") == 5


def test_two_cancellations_before_their_order_at_the_same_moment_merge_the_same_way_whatever_came_first() -> None:
    # The reason of the first asked for, and of the same moment the one with the smaller event id (as PostgreSQL
    # reads them back): not whichever the store happened to return first.
    for first, second in (("event-b", "event-a"), ("event-a", "event-b")):
        uow = world()
        reasons = {"event-a": "FRAUD_SUSPECTED", "event-b": "CUSTOMER_REQUEST"}
        for event in (first, second):
            run(uow, {**cancel("early", reason=reasons[event]), "event_id": event})
        run(uow, factories.order("early", "2026-01-10", [("SKU", 2)]))
        assert uow.state.lines[("early", "L1")].cancel_reason is CancelReason.FRAUD_SUSPECTED


def test_a_cancellation_of_a_line_the_order_does_not_have_is_answered_unknown_line() -> None:
    uow = world()
    run(uow, factories.order("1", "2026-01-10", [("SKU", 2)]))
    run(uow, cancel("1", "L9"))
    answer = of(uow, BackorderStatusChanged)[-1]
    assert (answer.status, answer.line_id, answer.cancel_reason) == (LineStatus.UNKNOWN_LINE, "L9", None)
    assert uow.state.lines[("1", "L1")].status is LineStatus.BACKORDERED  # nothing changed


def test_a_cancellation_naming_lines_of_an_unknown_order_is_pending_for_each() -> None:
    uow = world()
    run(uow, cancel("early", "L1", "L2"))
    answers = of(uow, BackorderStatusChanged)
    assert [(a.line_id, a.status) for a in answers] == [
        ("L1", LineStatus.CANCEL_PENDING),
        ("L2", LineStatus.CANCEL_PENDING),
    ]


def test_an_allocated_notice_keeps_the_dates_of_what_still_waits() -> None:
    # Contract 1.1: each waiting line's own date, the order's latest at the top, in every notification.
    uow = world()
    run(uow, factories.restock("SKU", "PO-1", 10, "2026-02-10"))
    run(uow, factories.order("1", "2026-01-10", [("SKU", 5)]))
    run(uow, factories.receipt("R-1", "SKU", 2))
    status = of(uow, BackorderStatusChanged)[-1]
    assert status.status is LineStatus.PARTIALLY_ALLOCATED and status.expected_ship_date is not None
    [allocated] = [n for n in of(uow, CustomerNotification) if n.type is NotificationType.BACKORDER_ALLOCATED]
    assert [(line.quantity, line.expected_ship_date) for line in allocated.lines] == [(2, status.expected_ship_date)]
    assert allocated.expected_ship_date == status.expected_ship_date and allocated.cancel_allowed


def test_notification_lines_carry_their_own_expected_ship_dates() -> None:
    uow = world("SOON", "LATE")
    shop = dataclasses.replace(SHOP, product=ProductPolicy(lead_time_days=10))
    run(uow, policy("SOON", lead_time_days=3), shop)
    run(uow, factories.order("1", "2026-01-19", [("SOON", 1), ("LATE", 1)]), shop)
    [confirmed] = [n for n in of(uow, CustomerNotification) if n.type is NotificationType.BACKORDER_CONFIRMED]
    dates = {ln.sku: ln.expected_ship_date for ln in confirmed.lines}
    assert dates["SOON"] is not None and dates["LATE"] is not None and dates["SOON"] < dates["LATE"]
    assert confirmed.expected_ship_date == dates["LATE"]  # the order's date stays the latest of its lines


# ------------------------------------------------------------------------------------------ invariants

SKUS = ["A", "B"]
POS = {"PO-1": "acme", "PO-2": "slowco"}  # purchase orders and their suppliers


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("order"),
            st.lists(st.tuples(st.sampled_from(SKUS), st.integers(1, 6)), min_size=1, max_size=2),
            st.sampled_from([None, "SHIP_COMPLETE", "SHIP_AVAILABLE_NOW"]),
            st.sampled_from(["STANDARD", "VIP"]),
            st.integers(0, 40),
            st.sampled_from(["C1", "C2", "C3"]),
        ),
        st.tuples(st.just("receipt"), st.sampled_from(SKUS), st.integers(1, 12), st.sampled_from([None, *sorted(POS)])),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(
            st.just("policy"),
            st.sampled_from(SKUS),
            st.booleans(),
            st.none() | st.integers(0, 8),
            st.none() | st.integers(0, 2),  # a pre-order product released in this many days
            st.none() | st.integers(1, 10),  # max_promise_days
        ),
        st.tuples(
            st.just("restock"),
            st.sampled_from(SKUS),
            st.sampled_from(sorted(POS)),
            st.integers(0, 10),
            st.integers(-5, 20),
        ),
        st.tuples(st.just("sweep")),
    ),
    max_size=30,
)
reliability = st.tuples(st.none() | st.sampled_from([0.5, 1.0]), st.sampled_from(UnreliableSupplier))


def apply(
    uow: FakeUnitOfWork, i: int, op: tuple[Any, ...], shop: ShopPolicy, now: dt.datetime, placed: list[str]
) -> None:
    """Step i of generated `operations`, at `now`; `placed`: the orders placed so far. Its record's event
    id is made of i, so that the same steps give the same events."""
    record: dict[str, Any] | None = None
    if op[0] == "order":
        _, lines, split, tier, age, customer = op
        placed.append(f"O{i}")
        record = factories.order(
            f"O{i}",
            (now - dt.timedelta(days=age)).isoformat(),
            lines,
            split_preference=split,
            customer_tier=tier,
            customer_id=customer,
        )
    elif op[0] == "receipt":
        po = {"purchase_order_id": op[3], "supplier_id": POS[op[3]]} if op[3] else {}
        record = factories.receipt(f"R{i}", op[1], op[2], **po)
    elif op[0] == "cancel" and placed:
        record = cancel(placed[op[1] % len(placed)])
    elif op[0] == "policy":
        _, sku, allowed, cap, release_in, promise_days = op
        release = None if release_in is None else NOW.date() + dt.timedelta(days=release_in)
        record = policy(
            sku,
            backorders_allowed=allowed,
            max_backorder_qty_per_customer=cap,
            available_from=release,
            max_promise_days=promise_days,
            occurred_at=now,
        )
    elif op[0] == "restock":
        _, sku, po, quantity, days = op
        expected = now.date() + dt.timedelta(days=days)
        record = factories.restock(sku, po, quantity, expected, now, supplier_id=POS[po])
    elif op[0] == "sweep":
        sweep(uow, shop, now)
    if record is not None:
        run(uow, {**record, "event_id": f"event-{i}"}, shop, now)


@settings(max_examples=examples(300), deadline=None)
@given(
    ops=operations,
    mode=st.sampled_from(ShipCompleteMode),
    scope=st.sampled_from(ShipCompleteScope),
    bound=reliability,
)
def test_units_are_never_lost_or_created_whatever_happens(
    ops: list[tuple[Any, ...]],
    mode: ShipCompleteMode,
    scope: ShipCompleteScope,
    bound: tuple[float | None, UnreliableSupplier],
) -> None:
    eta = dataclasses.replace(SHOP.eta, min_on_time_ratio=bound[0], unreliable_supplier=bound[1])
    shop = dataclasses.replace(SHOP, ship_complete_mode=mode, ship_complete_scope=scope, eta=eta)
    uow = world(*SKUS)
    placed: list[str] = []
    for i, op in enumerate(ops):
        now = NOW + dt.timedelta(hours=6 * i)  # a pre-order product may be released along the way
        set_aside = {
            sku: sum(ln.allocated + ln.reserved for ln in uow.state.lines.values() if ln.sku == sku) for sku in SKUS
        }
        unreleased = {sku for sku in SKUS if held_until(uow.policy(sku) or shop.product, now) is not None}
        apply(uow, i, op, shop, now, placed)
        # Nothing of a product not released yet is given to anyone (unless this step's policy released it).
        unreleased = {sku for sku in unreleased if held_until(uow.policy(sku) or shop.product, now) is not None}
        for sku in unreleased:
            assert sum(ln.allocated + ln.reserved for ln in uow.state.lines.values() if ln.sku == sku) <= set_aside[sku]
        for sku in SKUS:
            lines_ = [line for line in uow.state.lines.values() if line.sku == sku]
            held = sum(line.allocated + line.reserved for line in lines_)
            # Every unit received is in exactly one place: available, reserved or allocated.
            assert uow.state.received.get(sku, 0) == uow.available(sku) + held
            assert uow.available(sku) >= 0
        for line in uow.state.lines.values():
            assert 0 <= line.allocated + line.reserved <= line.wanted <= line.ordered
            assert (
                line.status
                is LineStatus.of(
                    line.wanted, line.allocated + line.reserved, rejected=line.rejected, cancelled=line.cancelled
                )
                or line.held
            )


class Undone(Exception):
    """Raised to roll an event back."""


def assert_dates_held(uow: FakeUnitOfWork) -> None:
    """What the unit of work keeps of a SKU's dated queue is what each of its lines holds."""
    for sku in SKUS:
        dated = uow.dated(sku)
        if dated is None:
            continue
        for (line, _), eta in zip(dated.order.lines, dated.etas, strict=True):
            (held,) = [x for x in uow.order_lines([line.order_id]) if x.line_id == line.line_id]
            assert (held.expected_ship_date, held.eta_basis) == (eta.date, eta.basis), (sku, line.order_id)


@settings(max_examples=examples(300), deadline=None)
@given(ops=operations, bound=reliability, hours=st.sampled_from([0, 1, 6]), data=st.data())
def test_what_a_unit_of_work_keeps_from_one_event_to_the_next_changes_no_outcome(
    ops: list[tuple[Any, ...]],
    bound: tuple[float | None, UnreliableSupplier],
    hours: int,
    data: st.DataObject,
) -> None:
    """Events handled in one unit of work, which keeps its serving orders and dated queues from event to
    event (as a batch does; some events rolled back), leave the same lines, stock and outbox as events each
    in a unit of work of its own, which works everything out again from what the store holds."""
    shop = dataclasses.replace(
        SHOP, eta=dataclasses.replace(SHOP.eta, min_on_time_ratio=bound[0], unreliable_supplier=bound[1])
    )
    # Every SKU has a restock on its way first, so that its queue is dated from the first order on.
    ops = [("restock", sku, po, 40, 10) for sku, po in zip(SKUS, sorted(POS), strict=False)] + ops
    undone = data.draw(st.sets(st.integers(len(SKUS), len(ops) - 1), max_size=3)) if len(ops) > len(SKUS) else set()
    together, apart = world(*SKUS), world(*SKUS)
    placed_together: list[str] = []
    placed_apart: list[str] = []
    for i, op in enumerate(ops):
        now = NOW + dt.timedelta(hours=hours * i)
        if i in undone:
            with contextlib.suppress(Undone), together.savepoint():
                apply(together, i, op, shop, now, list(placed_together))
                raise Undone
        else:
            apply(together, i, op, shop, now, placed_together)
            apply(apart, i, op, shop, now, placed_apart)
            apart.save()
        assert_dates_held(together)
    assert together.state.lines == apart.state.lines
    assert together.state.available == apart.state.available
    assert together.state.outbox == apart.state.outbox


def test_a_line_named_twice_is_cancelled_once() -> None:
    uow = world()
    run(uow, factories.order("1", "2026-01-10", [("SKU", 3)]))
    run(uow, cancel("1", "L1", "L1"))
    assert uow.state.lines[("1", "L1")].cancelled == 3


def test_an_order_cancelled_before_it_arrived_counts_in_no_outcome() -> None:
    uow = world()
    run(uow, cancel("early"))
    run(uow, factories.order("early", "2026-01-10", [("SKU", 2)]))
    run(uow, factories.order("normal", "2026-01-10", [("SKU", 2)]))
    assert uow.state.outcomes == {"normal": OrderOutcome.FULLY_BACKORDERED}
