"""When not to take a backorder (a date past the promise limit, an unreliable supplier) and pre-orders, with
the real handlers over an in-memory store; and the pure rules they rest on."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests import examples, factories
from tests.unit.fakes import FakeUnitOfWork, FakeUnitOfWorkFactory, MemoryStore, handle_record
from worker.domain.allocation import ShipCompleteMode
from worker.domain.eta import (
    Eta,
    EtaRules,
    UnreliableSupplier,
    is_unreliable,
    not_before_release,
    on_time_ratio,
    supplier_margin,
)
from worker.domain.events import BackorderStatusChanged, CustomerNotification, FulfillmentRequested, NotificationType
from worker.domain.model import WAITING, LineStatus, OrderLineState, SplitPreference
from worker.domain.policy import (
    Outlook,
    ProductPolicy,
    ShipCompleteScope,
    ShopPolicy,
    held_until,
    is_preorder,
    judge_shortfall,
    promise_limit,
    waits_from,
)
from worker.service.handlers import sweep, sweep_once
from worker.settings import Settings

NOW = dt.datetime(2026, 1, 20, 12, tzinfo=dt.UTC)
SHOP = ShopPolicy(eta=EtaRules(handling_days=1, default_supplier_margin_days=2))


def run(uow: FakeUnitOfWork, record: dict[str, Any], shop: ShopPolicy = SHOP, now: dt.datetime = NOW) -> None:
    handle_record(uow, record, shop, now)


def delivered(uow: FakeUnitOfWork, supplier: str, po: str, expected: str, received: str) -> None:
    """A delivery of `supplier` against a purchase order of a SKU of its own: its history, nothing else."""
    sku = f"HISTORY-{po}"
    run(uow, factories.restock(sku, po, 1, expected, supplier_id=supplier))
    run(uow, factories.receipt(f"R-{po}", sku, 1, received, purchase_order_id=po, supplier_id=supplier))


def out(uow: FakeUnitOfWork, kind: type) -> list[Any]:
    return [e for e in uow.state.outbox if isinstance(e, kind)]


def statuses(uow: FakeUnitOfWork, order_id: str) -> list[BackorderStatusChanged]:
    return [s for s in out(uow, BackorderStatusChanged) if s.order_id == order_id]


def notices(uow: FakeUnitOfWork, order_id: str, kind: NotificationType) -> list[CustomerNotification]:
    return [n for n in out(uow, CustomerNotification) if n.order_id == order_id and n.type is kind]


def shipped(uow: FakeUnitOfWork) -> list[tuple[str, int]]:
    return sorted((f.order_id, sum(line.quantity for line in f.lines)) for f in out(uow, FulfillmentRequested))


# ------------------------------------------------------------------------------------------ the pure rules


def test_the_shop_settings_of_the_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().shop_policy().product.max_promise_days is None
    assert Settings().shop_policy().eta.min_on_time_ratio is None
    monkeypatch.setenv("BACKORDER_MAX_PROMISE_DAYS", "45")
    monkeypatch.setenv("BACKORDER_SUPPLIER_MIN_ON_TIME_RATIO", "0.8")
    monkeypatch.setenv("BACKORDER_UNRELIABLE_SUPPLIER", "refuse")
    shop = Settings().shop_policy()
    assert shop.product.max_promise_days == 45
    assert (shop.eta.min_on_time_ratio, shop.eta.unreliable_supplier) == (0.8, UnreliableSupplier.REFUSE)
    for name, value in [("MAX_PROMISE_DAYS", "0"), ("SUPPLIER_MIN_ON_TIME_RATIO", "1.5"), ("UNRELIABLE_SUPPLIER", "x")]:
        monkeypatch.setenv(f"BACKORDER_{name}", value)
        with pytest.raises(ValidationError):
            Settings()
        monkeypatch.delenv(f"BACKORDER_{name}")


def test_the_promise_limit_is_the_products_else_the_shops() -> None:
    shop = dataclasses.replace(SHOP, product=ProductPolicy(max_promise_days=30))
    assert promise_limit(ProductPolicy(max_promise_days=90), shop) == 90
    assert promise_limit(ProductPolicy(), shop) == 30
    assert promise_limit(ProductPolicy(), SHOP) is None


def test_a_shortfall_is_judged_on_its_date_after_the_order_and_on_its_supplier() -> None:
    placed = dt.datetime(2026, 1, 20, 23, tzinfo=dt.UTC)

    def verdict(date: dt.date | None, **kw: Any) -> tuple[int, int, str | None]:
        v = judge_shortfall(
            4, policy=kw.pop("policy", ProductPolicy()), customer_waiting=0, outlook=Outlook(placed, date, **kw),
            max_promise_days=10, refuse_unreliable=True,
        )  # fmt: skip
        return v.accepted, v.rejected, v.reason

    assert verdict(dt.date(2026, 1, 30)) == (4, 0, None)  # 10 days after the order's date: within
    accepted, rejected, reason = verdict(dt.date(2026, 1, 31))
    assert (accepted, rejected) == (0, 4)
    assert reason == "expected to ship 2026-01-31, 11 days after the order; backorders are promised within 10 days"
    assert verdict(None)[2] == "expected ship date unknown; backorders are promised within 10 days"
    assert verdict(dt.date(2026, 1, 25), unreliable_supplier="slow", supplier_record="on time for 0 of its last 3")[
        2
    ] == ("supplier slow is unreliable (on time for 0 of its last 3)")
    # A pre-order is accepted whatever its date (and even where backorders are not allowed); not when discontinued.
    preorder = ProductPolicy(available_from=dt.date(2026, 3, 1), backorders_allowed=False)
    assert verdict(None, policy=preorder) == (4, 0, None)
    assert verdict(None, policy=dataclasses.replace(preorder, discontinued=True))[1] == 4


def test_on_time_ratio_reliability_and_a_widened_margin() -> None:
    rules = EtaRules(min_on_time_ratio=0.8)
    assert on_time_ratio([]) is None and on_time_ratio([0, -2, 3, 5]) == 0.5
    assert not is_unreliable([], rules)  # a supplier with no delivery yet is not judged
    assert is_unreliable([0, 0, 0, 4], rules) and not is_unreliable([0, 0, 0, 0, 4], rules)
    assert not is_unreliable([9, 9], EtaRules())  # no bound: nobody is unreliable
    assert supplier_margin([0, 10], EtaRules()) == 5  # the average
    assert supplier_margin([0, 10], rules) == 10  # widened: the worst of its last deliveries
    assert supplier_margin([0, 10], dataclasses.replace(rules, unreliable_supplier=UnreliableSupplier.REFUSE)) == 5


def test_pre_order_dates_and_waits() -> None:
    policy = ProductPolicy(available_from=dt.date(2026, 3, 1))
    before, on_the_day = dt.datetime(2026, 2, 28, 23, 59, tzinfo=dt.UTC), dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert is_preorder(policy, before) and not is_preorder(policy, on_the_day)
    assert held_until(policy, before) == dt.date(2026, 3, 1) and held_until(policy, on_the_day) is None
    assert waits_from(policy, before) == on_the_day and waits_from(policy, on_the_day) == on_the_day
    assert held_until(ProductPolicy(), before) is None and waits_from(ProductPolicy(), before) == before
    etas = {
        ("a", "L1"): Eta(dt.date(2026, 2, 2), "in stock"),
        ("b", "L1"): Eta(dt.date(2026, 3, 9), "PO-1 from acme expected 2026-03-06 (+1 handling, +2 supplier)", "acme"),
        ("c", "L1"): Eta(None, "unknown"),
    }
    floored = not_before_release(etas, dt.date(2026, 3, 1), EtaRules(handling_days=1))
    assert [floored[k].date for k in etas] == [dt.date(2026, 3, 2), dt.date(2026, 3, 9), dt.date(2026, 3, 2)]
    assert floored[("a", "L1")].basis == "in stock; pre-order: released 2026-03-01"
    assert floored[("b", "L1")] == etas[("b", "L1")]


# ------------------------------------------------------------------------------------------ max_promise_days


def test_a_backorder_expected_past_the_limit_is_refused_and_the_date_judged_is_the_lines_rank_not_the_tail() -> None:
    uow = FakeUnitOfWork()
    run(uow, factories.policy("S", max_promise_days=10))
    run(uow, factories.restock("S", "PO-1", 5, "2026-01-25"))  # ships 01-28: +1 handling, +2 margin
    run(uow, factories.restock("S", "PO-2", 20, "2026-03-01"))  # ships 03-04
    run(uow, factories.order("old", "2026-01-19", [("S", 4)]))
    # A VIP placed later ranks ahead of "old": its 3 units come with PO-1, not after the 4 already waiting.
    run(uow, factories.order("vip", "2026-01-20", [("S", 3)], customer_tier="VIP"))
    # A standard order ranks behind both: its units come with PO-2, 43 days after the order.
    run(uow, factories.order("std", "2026-01-20", [("S", 3)]))

    [vip] = statuses(uow, "vip")
    assert (vip.status, vip.expected_ship_date) == (LineStatus.BACKORDERED, dt.date(2026, 1, 28))
    [std] = statuses(uow, "std")
    assert (std.status, std.quantity_backordered, std.expected_ship_date) == (LineStatus.REJECTED, 0, None)
    assert std.reason == (
        "3 of 3 rejected: expected to ship 2026-03-04, 43 days after the order; backorders are promised within 10 days"
    )
    [rejected] = notices(uow, "std", NotificationType.BACKORDER_REJECTED)
    assert [(ln.quantity, ln.status) for ln in rejected.lines] == [(3, LineStatus.REJECTED)]
    assert "backorders are promised within 10 days" in (rejected.reason or "")
    assert not notices(uow, "std", NotificationType.BACKORDER_CONFIRMED)


def test_the_shop_default_applies_to_products_without_their_own_limit_and_units_in_stock_still_ship() -> None:
    shop = dataclasses.replace(SHOP, product=ProductPolicy(max_promise_days=30))
    uow = FakeUnitOfWork()
    run(uow, factories.policy("SLOW", lead_time_days=60), shop)  # no limit of its own: the shop's 30 days
    run(uow, factories.policy("PATIENT", lead_time_days=60, max_promise_days=90), shop)
    run(uow, factories.receipt("R", "SLOW", 2), shop)
    run(uow, factories.order("slow", "2026-01-20", [("SLOW", 5)]), shop)
    run(uow, factories.order("patient", "2026-01-20", [("PATIENT", 5)]), shop)
    run(uow, factories.order("nothing-known", "2026-01-20", [("UNKNOWN", 1)]), shop)  # no policy: the shop's

    assert shipped(uow) == [("slow", 2)]  # what is in stock ships; the 3 that would wait 61 days do not
    [slow] = statuses(uow, "slow")
    assert (slow.status, slow.quantity_allocated) == (LineStatus.REJECTED, 2)
    assert "3 of 5 rejected: expected to ship 2026-03-22, 61 days after the order" in (slow.reason or "")
    [patient] = statuses(uow, "patient")
    assert (patient.status, patient.expected_ship_date) == (LineStatus.BACKORDERED, dt.date(2026, 3, 22))
    [unknown] = statuses(uow, "nothing-known")
    assert unknown.status is LineStatus.REJECTED and "expected ship date unknown" in (unknown.reason or "")


def test_a_ship_complete_line_past_the_limit_is_refused_whole() -> None:
    uow = FakeUnitOfWork()
    run(uow, factories.policy("S", max_promise_days=10, lead_time_days=30))
    run(uow, factories.receipt("R", "S", 2))
    run(uow, factories.order("O", "2026-01-20", [("S", 5)], split_preference="SHIP_COMPLETE"))
    [line] = statuses(uow, "O")
    assert (line.status, line.quantity_allocated, line.quantity_reserved) == (LineStatus.REJECTED, 0, 0)
    assert "the line ships complete or not at all" in (line.reason or "")
    assert shipped(uow) == [] and uow.available("S") == 2


def test_a_second_line_of_the_sku_is_judged_after_the_first_was_refused() -> None:
    uow = FakeUnitOfWork()
    run(uow, factories.policy("S", max_promise_days=10))
    run(uow, factories.restock("S", "PO-1", 3, "2026-01-25"))
    run(uow, factories.restock("S", "PO-2", 50, "2026-04-01"))
    # L1 (5 units) cannot come within 10 days and is refused; L2 (3 units) then comes with PO-1.
    run(uow, factories.order("O", "2026-01-20", [("S", 5), ("S", 3)]))
    by_line = {s.line_id: s for s in statuses(uow, "O")}
    assert by_line["L1"].status is LineStatus.REJECTED
    assert (by_line["L2"].status, by_line["L2"].expected_ship_date) == (LineStatus.BACKORDERED, dt.date(2026, 1, 28))


# ------------------------------------------------------------------------------------------ supplier reliability


def unreliable_world(mode: UnreliableSupplier) -> tuple[FakeUnitOfWork, ShopPolicy]:
    shop = dataclasses.replace(SHOP, eta=dataclasses.replace(SHOP.eta, min_on_time_ratio=0.8, unreliable_supplier=mode))
    uow = FakeUnitOfWork()
    delivered(uow, "slow", "PO-S1", "2026-01-01", "2026-01-11")  # 10 days late
    delivered(uow, "slow", "PO-S2", "2026-01-05", "2026-01-05")  # on time: 1 of 2, below 80%
    delivered(uow, "good", "PO-G1", "2026-01-05", "2026-01-06")  # 1 day late
    delivered(uow, "good", "PO-G2", "2026-01-06", "2026-01-06")
    delivered(uow, "good", "PO-G3", "2026-01-07", "2026-01-07")
    delivered(uow, "good", "PO-G4", "2026-01-08", "2026-01-08")
    delivered(uow, "good", "PO-G5", "2026-01-09", "2026-01-08")  # early counts as on time: 4 of 5, 80%
    run(uow, factories.restock("FROM-SLOW", "PO-1", 10, "2026-01-25", supplier_id="slow"), shop)
    run(uow, factories.restock("FROM-GOOD", "PO-2", 10, "2026-01-25", supplier_id="good"), shop)
    return uow, shop


def test_a_backorder_resting_on_a_supplier_below_the_on_time_bound_is_refused_when_the_shop_refuses() -> None:
    uow, shop = unreliable_world(UnreliableSupplier.REFUSE)
    run(uow, factories.order("slow", "2026-01-20", [("FROM-SLOW", 2)]), shop)
    run(uow, factories.order("good", "2026-01-20", [("FROM-GOOD", 2)]), shop)
    [slow] = statuses(uow, "slow")
    assert slow.status is LineStatus.REJECTED
    assert slow.reason == "2 of 2 rejected: supplier slow is unreliable (on time for 1 of its last 2 deliveries)"
    [good] = statuses(uow, "good")
    # good's margin: the average lateness of its last deliveries (1 day, once in 5), rounded up.
    assert (good.status, good.expected_ship_date) == (LineStatus.BACKORDERED, dt.date(2026, 1, 27))


def test_the_margin_of_a_supplier_below_the_bound_is_widened_to_its_worst_when_the_shop_widens() -> None:
    uow, shop = unreliable_world(UnreliableSupplier.WIDEN)
    run(uow, factories.order("slow", "2026-01-20", [("FROM-SLOW", 2)]), shop)
    [slow] = statuses(uow, "slow")
    # 01-25 + 1 handling + 10 (its worst) rather than + 5 (its average)
    assert (slow.status, slow.expected_ship_date) == (LineStatus.BACKORDERED, dt.date(2026, 2, 5))
    [confirmed] = notices(uow, "slow", NotificationType.BACKORDER_CONFIRMED)
    assert confirmed.expected_ship_date == dt.date(2026, 2, 5)


# ------------------------------------------------------------------------------------------ pre-orders

RELEASE = dt.date(2026, 2, 1)


def preorder_world(**policy: Any) -> FakeUnitOfWork:
    uow = FakeUnitOfWork()
    run(uow, factories.policy("NEW", available_from=RELEASE, **policy))
    run(uow, factories.receipt("R-1", "NEW", 3))  # before the release: held
    run(uow, factories.order("std", "2025-12-20", [("NEW", 2)]))
    run(uow, factories.order("vip", "2026-01-19", [("NEW", 2)], customer_tier="VIP"))
    run(uow, factories.order("complete", "2026-01-20", [("NEW", 1)], split_preference="SHIP_COMPLETE"))
    return uow


def test_pre_orders_are_accepted_with_the_release_date_and_nothing_ships_before_it() -> None:
    uow = preorder_world(backorders_allowed=False, max_promise_days=5)  # neither refuses a pre-order

    assert shipped(uow) == []
    assert uow.available("NEW") == 3  # held: received, available, given to nobody yet
    for order_id in ("std", "vip", "complete"):
        [status] = statuses(uow, order_id)
        assert (status.status, status.quantity_allocated, status.quantity_reserved) == (LineStatus.BACKORDERED, 0, 0)
        assert status.expected_ship_date == dt.date(2026, 2, 2)  # the release, +1 handling
        assert status.reason == "pre-order: nothing ships before the release on 2026-02-01"
        [confirmed] = notices(uow, order_id, NotificationType.BACKORDER_CONFIRMED)
        assert confirmed.expected_ship_date == dt.date(2026, 2, 2)
        assert confirmed.reason == "pre-order: nothing ships before the release on 2026-02-01"
    # A receipt before the release is held too, and a cancellation frees nothing to anyone.
    run(uow, factories.receipt("R-2", "NEW", 1))
    run(uow, factories.cancellation("complete"))
    assert shipped(uow) == [] and uow.available("NEW") == 4


def test_at_the_release_the_sweep_serves_the_held_units_in_priority_order() -> None:
    uow = preorder_world()

    sweep(uow, SHOP, dt.datetime(2026, 1, 31, 23, tzinfo=dt.UTC))  # the day before: status updates, no shipment
    assert shipped(uow) == [] and uow.available("NEW") == 3
    sweep(uow, SHOP, dt.datetime(2026, 2, 1, 6, tzinfo=dt.UTC))

    # The VIP first although the standard order is six weeks older: a pre-order's wait (for promotion past
    # the starvation limit) counts from the release, so "std" is not promoted; then "std" gets the last unit.
    assert shipped(uow) == [("std", 1), ("vip", 2)]
    assert uow.available("NEW") == 0
    allocated = {n.order_id for n in out(uow, CustomerNotification) if n.type is NotificationType.BACKORDER_ALLOCATED}
    assert allocated == {"std", "vip"}
    [std] = [s for s in statuses(uow, "std")[1:]]
    assert (std.status, std.quantity_allocated, std.quantity_backordered) == (LineStatus.PARTIALLY_ALLOCATED, 1, 1)
    assert std.reason == "rank 5 standard; waited 6 hours"
    # Released: what still waits has the date the supply gives (none known now), no longer the release's.
    assert uow.state.lines[("complete", "L1")].expected_ship_date is None
    sweep(uow, SHOP, dt.datetime(2026, 2, 1, 7, tzinfo=dt.UTC))  # again: nothing held, nothing more
    assert shipped(uow) == [("std", 1), ("vip", 2)]
    # After the release, a receipt is served at once.
    run(uow, factories.receipt("R-2", "NEW", 2), now=dt.datetime(2026, 2, 2, tzinfo=dt.UTC))
    assert shipped(uow) == [("complete", 1), ("std", 1), ("std", 1), ("vip", 2)]


def test_a_release_brought_forward_or_withdrawn_serves_what_was_held_at_once() -> None:
    # Brought forward to today: still pre-orders, waiting since today's release, so the VIP goes first.
    # Withdrawn: ordinary backorders, and "std" has waited a month since its order (promoted past 14 days).
    for release, first in ((NOW.date(), [("std", 1), ("vip", 2)]), (None, [("std", 2), ("vip", 1)])):
        uow = preorder_world()
        run(uow, factories.policy("NEW", "2026-01-20T11:00", available_from=release))
        assert shipped(uow) == first
        assert uow.available("NEW") == 0


def test_a_release_withdrawn_after_it_came_serves_what_was_held_at_once() -> None:
    # The release came an hour ago, and no sweep has served what was held yet: the product's policy without a
    # release date no longer holds anything, and nothing would serve those units but the SKU's next event.
    uow = preorder_world()
    after = dt.datetime(2026, 2, 1, 1, tzinfo=dt.UTC)
    run(uow, factories.policy("NEW", "2026-02-01T00:30", available_from=None), now=after)
    assert shipped(uow) == [("std", 2), ("vip", 1)]
    assert uow.available("NEW") == 0


def test_a_date_moved_twice_under_one_cause_is_told_twice() -> None:
    # A receipt before the release of a product with a lead time moves the date of the order behind the one it is
    # for; consumed again after the release (no sweep in between), it gives its held unit, and that order's date
    # moves again under the same cause: the second notice is not the first one's again (which the outbox would
    # keep instead), and the date the worker holds as told is the one the customer was told last.
    uow = FakeUnitOfWork()
    release = (NOW + dt.timedelta(days=6)).date()
    run(uow, factories.policy("P", lead_time_days=10, available_from=release))
    run(uow, factories.order("X", "2026-01-20T12:00", [("P", 1)]))
    run(uow, factories.order("Y", "2026-01-20T12:01", [("P", 1)]))
    receipt = factories.receipt("R-1", "P", 1, "2026-01-25T12:00")
    run(uow, receipt, now=NOW + dt.timedelta(days=5))  # held
    run(uow, receipt, now=NOW + dt.timedelta(days=12))  # the same message again, after the release

    assert shipped(uow) == [("X", 1)]
    moved = notices(uow, "Y", NotificationType.BACKORDER_ETA_CHANGED)
    assert [n.expected_ship_date for n in moved] == [dt.date(2026, 2, 5), dt.date(2026, 2, 12)]
    assert len({n.event_id for n in moved}) == 2
    assert uow.state.told["Y"] == dt.date(2026, 2, 12)


def test_the_sweep_in_bounded_transactions_releases_too() -> None:
    factory = FakeUnitOfWorkFactory(preorder_world().state)
    sent = sweep_once(factory, SHOP, dt.datetime(2026, 2, 1, 6, tzinfo=dt.UTC), wait=True)
    assert sent is not None and sent > 0
    fulfilled = [e for e in factory.state.outbox if isinstance(e, FulfillmentRequested)]
    assert sorted((f.order_id, f.lines[0].quantity) for f in fulfilled) == [("std", 1), ("vip", 2)]
    assert factory.state.available["NEW"] == 0


def test_a_pre_order_with_supply_expected_after_the_release_gets_the_later_date() -> None:
    uow = FakeUnitOfWork()
    run(uow, factories.policy("NEW", available_from=RELEASE))
    run(uow, factories.restock("NEW", "PO-1", 5, "2026-02-10"))
    run(uow, factories.order("O", "2026-01-20", [("NEW", 2)]))
    [status] = statuses(uow, "O")
    assert status.expected_ship_date == dt.date(2026, 2, 13)  # 02-10 + 1 handling + 2 margin


def test_a_pre_order_goes_stale_counting_from_the_release() -> None:
    uow = FakeUnitOfWork()
    run(uow, factories.policy("NEW", available_from=RELEASE, stale_after_days=10))
    run(uow, factories.order("O", "2025-12-01", [("NEW", 1)]))
    sweep(uow, SHOP, dt.datetime(2026, 2, 5, tzinfo=dt.UTC))  # 66 days after the order, 4 after the release
    assert not notices(uow, "O", NotificationType.BACKORDER_CANCELLED)
    sweep(uow, SHOP, dt.datetime(2026, 2, 12, tzinfo=dt.UTC))
    assert len(notices(uow, "O", NotificationType.BACKORDER_CANCELLED)) == 1


def test_a_shipment_of_units_a_stale_cancellation_freed_names_the_sweep_s_work_as_its_cause() -> None:
    # No inbound event caused it: `caused_by_event_id` names the sweep's cancellation (see the README's Events).
    uow = FakeUnitOfWork()
    run(uow, factories.policy("S", stale_after_days=10))
    run(uow, factories.order("OLD", "2026-01-01", [("S", 2)], split_preference="SHIP_COMPLETE"))
    run(uow, factories.order("NEXT", "2026-01-15", [("S", 1)]))
    run(uow, factories.receipt("R-1", "S", 1))  # held for OLD, which wants 2 and ships complete
    assert shipped(uow) == []
    as_of = dt.datetime(2026, 1, 21, tzinfo=dt.UTC)
    sweep(uow, SHOP, as_of)  # OLD waited 20 days: cancelled, its unit goes to NEXT
    [request] = [e for e in uow.state.outbox if isinstance(e, FulfillmentRequested)]
    assert (request.order_id, request.caused_by_event_id) == ("NEXT", f"stale/OLD/{as_of.isoformat()}")


def test_an_order_another_transaction_holds_is_told_its_status_update_at_the_next_sweep() -> None:
    # The sweep holds the orders it tells without waiting: one held elsewhere (being decided about) is left, its
    # step not claimed, and told by the next sweep that finds it free.
    uow = FakeUnitOfWork()
    for order_id in ("A", "B"):
        run(uow, factories.order(order_id, "2026-01-01", [("S", 1)]))
    busy = {"B"}
    hold = MemoryStore.hold_free_orders

    def held_elsewhere(store: MemoryStore, order_ids: Sequence[str]) -> tuple[set[str], list[OrderLineState]]:
        held, lines = hold(store, [o for o in order_ids if o not in busy])
        return held, lines

    factory = FakeUnitOfWorkFactory(uow.state)  # a unit of work a transaction, as the sweep runs them

    def told() -> list[int]:
        return [len(notices(FakeUnitOfWork(factory.state), o, NotificationType.BACKORDER_STATUS_UPDATE)) for o in "AB"]

    as_of = dt.datetime(2026, 1, 9, tzinfo=dt.UTC)  # day 8: the day-7 update is due
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MemoryStore, "hold_free_orders", held_elsewhere)
        sweep_once(factory, SHOP, as_of, wait=True)
    assert told() == [1, 0]
    sweep_once(factory, SHOP, as_of + dt.timedelta(hours=1), wait=True)
    assert told() == [1, 1]


def test_an_order_placed_on_or_after_the_release_is_no_pre_order() -> None:
    uow = FakeUnitOfWork()
    run(uow, factories.policy("NEW", available_from=RELEASE, backorders_allowed=False))
    after = dt.datetime(2026, 2, 3, tzinfo=dt.UTC)
    run(uow, factories.order("O", "2026-02-02", [("NEW", 1)]), now=after)
    [status] = statuses(uow, "O")
    assert status.status is LineStatus.REJECTED and "backorders not allowed" in (status.reason or "")


preorder_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("order"),
            st.integers(1, 5),
            st.sampled_from([None, "SHIP_COMPLETE", "SHIP_AVAILABLE_NOW"]),
            st.sampled_from(["STANDARD", "VIP"]),
            st.integers(0, 40),
        ),
        st.tuples(st.just("receipt"), st.integers(1, 8)),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("sweep")),
    ),
    min_size=4,
    max_size=25,
)


@settings(max_examples=examples(300), deadline=None)
@given(
    ops=preorder_ops,
    release_in=st.integers(1, 2),
    mode=st.sampled_from(ShipCompleteMode),
    scope=st.sampled_from(ShipCompleteScope),
)
def test_held_units_stay_counted_nothing_ships_before_the_release_and_after_it_the_queue_is_served(
    ops: list[tuple[Any, ...]], release_in: int, mode: ShipCompleteMode, scope: ShipCompleteScope
) -> None:
    shop = dataclasses.replace(SHOP, ship_complete_mode=mode, ship_complete_scope=scope)
    release = NOW.date() + dt.timedelta(days=release_in)
    released_at = dt.datetime.combine(release, dt.time(), tzinfo=dt.UTC)
    uow = FakeUnitOfWork()
    run(uow, factories.policy("NEW", available_from=release), shop)
    placed: list[str] = []
    served = False  # an event at or after the release has met the held units with the queue
    for i, op in enumerate(ops):
        now = NOW + dt.timedelta(hours=2 * i)
        if op[0] == "order":
            _, quantity, split, tier, age = op
            placed.append(f"O{i}")
            record = factories.order(
                f"O{i}", (now - dt.timedelta(days=age)).isoformat(), [("NEW", quantity)], split_preference=split,
                customer_tier=tier,
            )  # fmt: skip
            run(uow, record, shop, now)
        elif op[0] == "receipt":
            run(uow, factories.receipt(f"R{i}", "NEW", op[1]), shop, now)
        elif op[0] == "cancel" and placed:
            run(uow, factories.cancellation(placed[op[1] % len(placed)]), shop, now)
        elif op[0] == "sweep":
            sweep(uow, shop, now)
        served |= now >= released_at and (op[0] != "cancel" or bool(placed))
        lines = list(uow.state.lines.values())
        set_aside = sum(line.allocated + line.reserved for line in lines)
        # Every unit received is in exactly one place: available (held ones included), reserved or allocated.
        assert uow.state.received.get("NEW", 0) == uow.available("NEW") + set_aside
        if now < released_at:
            assert set_aside == 0 and not out(uow, FulfillmentRequested)
            assert all(line.status in (LineStatus.BACKORDERED, LineStatus.CANCELLED) for line in lines)
        if served:  # no unit stays on the shelf while a line that takes what there is waits for it
            assert uow.available("NEW") == 0 or not any(
                line.status in WAITING and line.split is SplitPreference.SHIP_AVAILABLE_NOW for line in lines
            )
