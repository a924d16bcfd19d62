"""Expected ship dates from the supply on its way, the status-update cadence, and when a date is news."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import examples, factories
from tests.unit.fakes import FakeState, FakeUnitOfWork, FakeUnitOfWorkFactory, handle_record
from tests.unit.test_allocation import NOW as ALLOCATION_NOW
from tests.unit.test_allocation import backorder, queues
from tests.unit.test_priority import rules_
from worker.domain.eta import (
    Eta,
    EtaRules,
    ExpectedReceipt,
    Supply,
    date_queue,
    expected_ship_dates,
    is_news,
    not_before_release,
    supplier_margin,
)
from worker.domain.events import BackorderStatusChanged, CustomerNotification, NotificationType
from worker.domain.model import Backorder, Cancellation, CancelReason, LineStatus
from worker.domain.policy import ShipCompleteScope, ShopPolicy
from worker.domain.priority import PriorityRules, ServingOrder, rank
from worker.domain.timeline import Cadence
from worker.service.handlers import _cancel, sweep, sweep_once

TODAY = dt.date(2026, 2, 1)
RULES = EtaRules(handling_days=1, default_supplier_margin_days=2)
FEB_20 = ExpectedReceipt("PO-1", "acme", 30, dt.date(2026, 2, 20))
MAR_5 = ExpectedReceipt("PO-2", "acme", 50, dt.date(2026, 3, 5))


def dates(queue: list[Any], supply: list[ExpectedReceipt], **kw: Any) -> list[dt.date | None]:
    etas = expected_ship_dates(
        queue,
        supply,
        on_hand=kw.pop("on_hand", 0),
        margins=kw.pop("margins", {}),
        lead_time_days=kw.pop("lead_time_days", None),
        today=TODAY,
        rules=RULES,
    )
    return [etas[(line.order_id, line.line_id)].date for line in queue]


def test_the_first_30_units_ship_after_the_feb_20_receipt_and_the_next_30_after_mar_5() -> None:
    queue = [backorder(f"O-{i}", i, 10) for i in range(6)]  # 60 units, in allocation order
    assert dates(queue, [MAR_5, FEB_20]) == [dt.date(2026, 2, 23)] * 3 + [dt.date(2026, 3, 8)] * 3  # +1 +2


def test_a_line_that_straddles_two_receipts_ships_after_the_second() -> None:
    queue = [backorder("A", 0, 25), backorder("B", 1, 10)]
    assert dates(queue, [FEB_20, MAR_5]) == [dt.date(2026, 2, 23), dt.date(2026, 3, 8)]


def test_a_supplier_that_came_5_days_late_twice_moves_its_dates_later() -> None:
    margin = supplier_margin([5, 5], RULES)
    assert margin == 5
    assert dates([backorder("A", 0, 10)], [FEB_20], margins={"acme": margin}) == [dt.date(2026, 2, 26)]
    assert supplier_margin([], RULES) == 2 and supplier_margin([-3, 1], RULES) == 1  # early counts as on time


def test_past_the_supply_the_lead_time_gives_the_date_and_without_it_the_date_is_unknown() -> None:
    queue = [backorder("A", 0, 30), backorder("B", 1, 5)]
    assert dates(queue, [FEB_20], lead_time_days=21) == [dt.date(2026, 2, 23), dt.date(2026, 2, 23)]
    assert dates(queue, [FEB_20]) == [dt.date(2026, 2, 23), None]
    assert dates([backorder("C", 0, 4)], [], on_hand=4) == [dt.date(2026, 2, 2)]


def test_news_is_later_by_more_than_the_allowed_days_or_earlier_into_a_nearer_week() -> None:
    told = dt.date(2026, 2, 18)  # a Wednesday
    assert not is_news(told, told + dt.timedelta(days=3), RULES)
    assert is_news(told, told + dt.timedelta(days=4), RULES)
    assert not is_news(told, dt.date(2026, 2, 16), RULES)  # earlier, same week
    assert is_news(told, dt.date(2026, 2, 13), RULES)  # earlier, the week before
    assert is_news(None, told, RULES) and not is_news(told, None, RULES)


@pytest.mark.parametrize(
    "days, step", [(6, None), (7, (1, 7)), (13, (1, 7)), (14, (2, 14)), (20, (2, 14)), (21, (3, 21)), (35, (5, 35))]
)
def test_the_cadence_is_day_7_day_14_then_every_7_days(days: int, step: tuple[int, int] | None) -> None:
    assert Cadence().due_step(dt.timedelta(days=days, hours=5)) == step


# ------------------------------------------------------------------------------------------ handlers

NOW = dt.datetime(2026, 2, 1, 12, tzinfo=dt.UTC)
SHOP = ShopPolicy(eta=RULES)


def run(uow: FakeUnitOfWork, record: dict[str, Any], now: dt.datetime = NOW) -> None:
    handle_record(uow, record, SHOP, now)


def restock(po: str, quantity: int, expected: dt.date, decided: str = "2026-02-01T00:00") -> dict[str, Any]:
    return factories.restock("SKU", po, quantity, expected, decided, event_id=f"{po}-{quantity}-{decided}")


def notices(uow: FakeUnitOfWork, kind: NotificationType) -> list[CustomerNotification]:
    return [e for e in uow.state.outbox if isinstance(e, CustomerNotification) and e.type is kind]


def test_a_withdrawn_purchase_order_moves_dates_and_tells_each_affected_order_once() -> None:
    uow = FakeUnitOfWork()
    uow.lock_stock(["SKU"])
    run(uow, restock("PO-1", 30, dt.date(2026, 2, 20)))
    run(uow, restock("PO-2", 50, dt.date(2026, 3, 5)))
    for i in range(6):
        run(uow, factories.order(f"O-{i}", f"2026-01-{10 + i}", [("SKU", 10)]))
    confirmed = {n.order_id: n.expected_ship_date for n in notices(uow, NotificationType.BACKORDER_CONFIRMED)}
    assert confirmed == {f"O-{i}": dt.date(2026, 2, 23) if i < 3 else dt.date(2026, 3, 8) for i in range(6)}

    run(uow, restock("PO-1", 0, dt.date(2026, 2, 20), "2026-02-01T01:00"))
    changed = notices(uow, NotificationType.BACKORDER_ETA_CHANGED)
    assert sorted(n.order_id for n in changed) == ["O-0", "O-1", "O-2"]  # the others keep their date
    assert {n.expected_ship_date for n in changed} == {dt.date(2026, 3, 8)}
    run(uow, restock("PO-1", 0, dt.date(2026, 2, 20), "2026-02-01T02:00"))
    assert len(notices(uow, NotificationType.BACKORDER_ETA_CHANGED)) == 3  # nothing new: no second notice


def test_status_updates_are_sent_once_per_step() -> None:
    uow = FakeUnitOfWork()
    uow.lock_stock(["SKU"])
    run(uow, factories.order("O", "2026-02-01T12:00", [("SKU", 1)]))
    for day in (3, 7, 7, 8, 14, 14, 21):
        sweep(uow, SHOP, NOW + dt.timedelta(days=day))
    updates = notices(uow, NotificationType.BACKORDER_STATUS_UPDATE)
    assert [n.reason.split(":")[0] for n in updates if n.reason] == ["day 7", "day 14", "day 21"]


def test_a_status_update_tells_the_date_the_rules_give_on_its_day() -> None:
    # The date rests on a purchase order due in three days that never comes, and nothing else happens to the SKU: by
    # the day-7 update that date has passed. The sweep dates the queue again first, as an event on it would: the
    # customer is told the new date once, and the update says the same.
    uow = FakeUnitOfWork()
    run(uow, restock("PO-1", 5, dt.date(2026, 2, 4)))
    run(uow, factories.order("O", "2026-02-01T12:00", [("SKU", 1)]))
    [confirmed] = notices(uow, NotificationType.BACKORDER_CONFIRMED)
    day_7 = NOW + dt.timedelta(days=7, hours=1)
    assert confirmed.expected_ship_date is not None and confirmed.expected_ship_date < day_7.date()

    sweep(uow, SHOP, day_7)
    sweep(uow, SHOP, day_7 + dt.timedelta(hours=1))
    [moved] = notices(uow, NotificationType.BACKORDER_ETA_CHANGED)
    [update] = notices(uow, NotificationType.BACKORDER_STATUS_UPDATE)
    assert moved.expected_ship_date is not None and moved.expected_ship_date > day_7.date()
    assert update.expected_ship_date == moved.expected_ship_date == uow.state.told["O"]
    assert uow.state.lines[("O", "L1")].expected_ship_date == moved.expected_ship_date


def backlog(orders: int) -> FakeState:
    """`orders` waiting orders: every third one of an SKU whose backorders go stale after 30 days and
    placed long ago, the others due for a status update a week after NOW."""
    uow = FakeUnitOfWork()
    run(uow, factories.policy("OLD", "2025-01-01", stale_after_days=30))
    for i in range(orders):
        sku, placed = ("OLD", "2025-12-01") if i % 3 == 0 else ("SKU", f"2026-01-{10 + i % 15:02d}")
        run(uow, factories.order(f"O-{i:03d}", placed, [(sku, 1)]))
    return uow.state


def swept_both_ways() -> tuple[dt.datetime, int, FakeUnitOfWork, FakeUnitOfWorkFactory]:
    """A backlog of 30 orders a week after NOW: (as of, outbox size before, swept in one transaction,
    a store of the same backlog not swept yet)."""
    state = backlog(30)
    as_of = NOW + dt.timedelta(days=7)
    whole = FakeUnitOfWork(state.copy())
    sweep(whole, SHOP, as_of)
    return as_of, len(state.outbox), whole, FakeUnitOfWorkFactory(state.copy())


def test_a_sweep_in_bounded_transactions_sends_what_one_transaction_sends() -> None:
    as_of, already, whole, store = swept_both_ways()
    progress: list[int] = []

    sent = sweep_once(
        store,
        SHOP,
        as_of,
        wait=False,
        orders_per_transaction=4,
        on_progress=lambda: progress.append(store.transactions),
    )

    assert store.state.outbox[already:] == whole.state.outbox[already:]
    assert sent == len(whole.state.outbox) - already
    assert len(notices(whole, NotificationType.BACKORDER_CANCELLED)) == 10
    stale = [e for e in whole.state.outbox[already:] if isinstance(e, BackorderStatusChanged)]
    assert len(stale) == 10 and {(s.status, s.cancel_reason) for s in stale} == {
        (LineStatus.CANCELLED, CancelReason.STALE)
    }
    assert len(notices(whole, NotificationType.BACKORDER_STATUS_UPDATE)) == 20
    # The listing, then 10 stale orders 4 at a time (3 transactions), then 30 orders 4 at a time (8):
    # each transaction committed on its own and reported as progress.
    assert store.transactions == 1 + 3 + 8
    assert progress == list(range(1, 13))


def test_a_sweep_stopped_between_transactions_keeps_what_it_committed_and_the_next_sends_nothing_twice() -> None:
    as_of, already, whole, store = swept_both_ways()

    first = sweep_once(store, SHOP, as_of, wait=False, orders_per_transaction=4, until=lambda: store.transactions >= 6)
    assert store.transactions == 6 and first == len(store.state.outbox) - already > 0
    second = sweep_once(store, SHOP, as_of, wait=False, orders_per_transaction=4)

    assert first is not None and second is not None
    assert first + second == len(whole.state.outbox) - already
    assert sorted(e.event_id for e in store.state.outbox) == sorted(e.event_id for e in whole.state.outbox)
    assert sweep_once(store, SHOP, as_of, wait=False, orders_per_transaction=4) == 0


def test_a_new_lead_time_moves_the_dates_of_what_waits_beyond_the_restocks() -> None:
    uow = FakeUnitOfWork()
    uow.lock_stock(["SKU"])
    run(uow, factories.policy("SKU", "2026-01-01", lead_time_days=10))
    run(uow, factories.order("O", "2026-01-31", [("SKU", 1)]))
    [confirmed] = notices(uow, NotificationType.BACKORDER_CONFIRMED)
    assert confirmed.expected_ship_date == dt.date(2026, 2, 12)  # today + 10 days lead time + 1 handling
    run(uow, factories.policy("SKU", "2026-01-02", lead_time_days=30))
    [changed] = notices(uow, NotificationType.BACKORDER_ETA_CHANGED)
    assert changed.expected_ship_date == dt.date(2026, 3, 4)


def test_a_held_line_does_not_hide_the_date_of_the_rest_of_its_order() -> None:
    shop = ShopPolicy(eta=RULES, ship_complete_scope=ShipCompleteScope.ORDER)
    uow = FakeUnitOfWork()
    uow.lock_stock(["SKU", "HERE"])

    handle_record(uow, factories.receipt("R", "HERE", 2), shop, NOW)
    handle_record(
        uow,
        factories.order("O", "2026-01-31", [("SKU", 1), ("HERE", 2)], split_preference="SHIP_COMPLETE"),
        shop,
        NOW,
    )
    assert uow.state.lines[("O", "L2")].held
    handle_record(uow, restock("PO-1", 5, dt.date(2026, 2, 20)), shop, NOW)
    [changed] = notices(uow, NotificationType.BACKORDER_ETA_CHANGED)
    assert changed.expected_ship_date == dt.date(2026, 2, 23)


def test_a_sweep_transaction_that_fails_is_skipped_and_the_rest_of_the_sweep_goes_on() -> None:
    as_of, already, _, store = swept_both_ways()
    store.refuse = lambda name: name == "OLD"  # every stale cancellation fails (it locks the stale SKU)
    failed: list[str] = []

    sent = sweep_once(store, SHOP, as_of, wait=False, orders_per_transaction=4, on_failure=failed.append)

    assert failed == ["stale"] * 3  # 10 stale orders, 4 a transaction: each reported, under its step

    updates = [e for e in store.state.outbox[already:] if isinstance(e, CustomerNotification)]
    assert sent == len(store.state.outbox) - already
    assert {n.type for n in updates} == {NotificationType.BACKORDER_STATUS_UPDATE}
    # Not held back by the failing cancellations; the stale orders, still waiting, get theirs too.
    assert len(updates) == 30


def test_a_stale_cancellation_that_meets_a_line_no_longer_waiting_says_nothing() -> None:
    uow = FakeUnitOfWork()
    run(uow, factories.order("O-1", "2026-01-01", [("SKU", 1)]))
    run(uow, factories.receipt("R-1", "SKU", 1))  # filled since the sweep listed it
    before = len(uow.state.outbox)
    asked = Cancellation("O-1", ("L1",), CancelReason.CUSTOMER_REQUEST, None, NOW)
    stale = Cancellation("O-1", ("L1",), CancelReason.STALE, "waited more than 30 days", NOW)

    assert len(_cancel(uow, asked, "c", SHOP, NOW)) == 1  # asked for by name: told why nothing happened
    assert _cancel(uow, stale, "s", SHOP, NOW) == []  # the sweep's own: nobody asked, nothing to say
    assert len(uow.state.outbox) == before


# ------------------------------------------------------------------------------------------ properties

receipts_ = st.lists(
    st.builds(
        ExpectedReceipt,
        purchase_order_id=st.sampled_from(["PO-1", "PO-2", "PO-3", "PO-4"]),
        supplier_id=st.sampled_from(["acme", "globex"]),
        quantity=st.integers(1, 60),
        expected_date=st.dates(TODAY - dt.timedelta(days=5), TODAY + dt.timedelta(days=60)),
    ),
    max_size=4,
    unique_by=lambda r: r.purchase_order_id,
)
supplies = st.builds(
    Supply.of,
    receipts_,
    on_hand=st.integers(0, 40),
    margins=st.dictionaries(st.sampled_from(["acme", "globex"]), st.integers(0, 9)),
    lead_time_days=st.none() | st.integers(1, 30),
    today=st.just(TODAY),
    rules=st.just(RULES),
    release=st.none() | st.dates(TODAY, TODAY + dt.timedelta(days=40)),
)


@settings(max_examples=examples(400))
@given(queue=queues, supply=supplies, rules=rules_, data=st.data())
def test_a_queue_dated_again_after_changes_has_the_dates_of_dating_it_whole(
    queue: tuple[Backorder, ...], supply: Supply, rules: PriorityRules, data: st.DataObject
) -> None:
    """Dating only the lines after those a changed order shares with the one dated before gives every line
    the date dating the whole queue gives it; a line left out keeps the date it had."""
    lines = list({(b.order_id, b.line_id): b for b in queue}.values())
    order = rank(lines, rules, ALLOCATION_NOW)
    before, everything = date_queue(order, supply)
    assert everything == expected_dates_of(order, supply)
    for step in range(data.draw(st.integers(1, 3))):
        members = [(b.order_id, b.line_id) for b, _ in order.lines]
        gone = data.draw(st.sets(st.sampled_from(members))) if members else set()
        joining = [dataclasses.replace(b, order_id=f"new{step}-{b.order_id}") for b in data.draw(queues)]
        joining = list({(b.order_id, b.line_id): b for b in joining}.values())
        changed = order.changed(gone, joining, rules, ALLOCATION_NOW)
        dated, redone = date_queue(changed, supply, before)
        whole, _ = date_queue(changed, supply)
        assert dated.etas == whole.etas and dated.demand == whole.demand
        was = {(b.order_id, b.line_id): eta for (b, _), eta in zip(order.lines, before.etas, strict=True)}
        for (line, _), eta in zip(changed.lines, dated.etas, strict=True):
            key = (line.order_id, line.line_id)
            assert key in redone or was.get(key) == eta, key
            assert dated.eta_of(key) == eta
        order, before = changed, dated
    again, redone = date_queue(order, supply, before)
    assert again is before and redone == {}  # nothing changed: nothing to do


def expected_dates_of(order: ServingOrder, supply: Supply) -> dict[tuple[str, str], Eta]:
    """What `expected_ship_dates` gives the order's lines, floored at the release as the handlers do."""
    etas = expected_ship_dates(
        order.queue,
        supply.receipts,
        on_hand=supply.on_hand,
        margins=dict(supply.margins),
        lead_time_days=supply.lead_time_days,
        today=supply.today,
        rules=supply.rules,
    )
    return not_before_release(etas, supply.release, supply.rules) if supply.release is not None else etas
