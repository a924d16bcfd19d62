"""A promise is what the worker then does: for generated queues and carts, the promise made on a snapshot
equals what placing the same order a moment later decides, with nothing else in between."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests import examples, factories
from tests.unit.fakes import FakeState, FakeUnitOfWork, MemoryStore, handle_record
from worker.domain.model import CustomerTier, ShippingService, SplitPreference
from worker.domain.policy import ShipCompleteScope, ShopPolicy
from worker.service.handlers import serving_order
from worker.service.promise import Cart, CartLine, QueueCopies, promise

NOW = dt.datetime(2026, 1, 20, 12, tzinfo=dt.UTC)
SKUS = ["A", "B", "C"]


def run(uow: FakeUnitOfWork, record: dict[str, Any], shop: ShopPolicy, now: dt.datetime = NOW) -> None:
    handle_record(uow, record, shop, now)


history = st.lists(
    st.one_of(
        st.tuples(
            st.just("order"),
            st.lists(
                st.tuples(st.sampled_from(SKUS), st.integers(1, 5)), min_size=1, max_size=2, unique_by=lambda x: x[0]
            ),
            st.sampled_from([None, "SHIP_COMPLETE"]),
            st.sampled_from(["STANDARD", "VIP"]),
            st.integers(1, 30),
        ),
        st.tuples(st.just("receipt"), st.sampled_from(SKUS), st.integers(1, 8)),
        st.tuples(st.just("restock"), st.sampled_from(SKUS), st.integers(1, 8), st.integers(1, 40)),
        st.tuples(
            st.just("policy"),
            st.sampled_from(SKUS),
            st.booleans(),
            st.none() | st.integers(1, 30),  # lead time
            st.none() | st.integers(1, 30),  # max promise days
            st.none() | st.integers(-5, 20),  # released this many days from now (a pre-order when ahead)
        ),
    ),
    max_size=12,
)
carts = st.tuples(
    st.lists(st.tuples(st.sampled_from(SKUS), st.integers(1, 6)), min_size=1, max_size=3, unique_by=lambda x: x[0]),
    st.sampled_from(list(CustomerTier)),
    st.sampled_from(list(ShippingService)),
    st.sampled_from([None, *SplitPreference]),
    st.none() | st.integers(0, 10),
)


def as_cart(cart: tuple[Any, ...]) -> Cart:
    lines, tier, service, split, need_in = cart
    return Cart(
        customer_id="shopper",
        customer_tier=tier,
        shipping_service=service,
        need_by=NOW.date() + dt.timedelta(days=need_in) if need_in is not None else None,
        split_preference=split,
        lines=tuple(CartLine(f"L{n}", sku, quantity) for n, (sku, quantity) in enumerate(lines, start=1)),
    )


def play(uow: FakeUnitOfWork, i: int, op: tuple[Any, ...], shop: ShopPolicy) -> None:
    """One step of a generated `history`, the i-th."""
    if op[0] == "order":
        _, lines, split, tier, age = op
        when = (NOW - dt.timedelta(days=age, minutes=i)).isoformat()
        run(uow, factories.order(f"O{i}", when, lines, split_preference=split, customer_tier=tier), shop)
    elif op[0] == "receipt":
        run(uow, factories.receipt(f"R{i}", op[1], op[2]), shop)
    elif op[0] == "restock":
        run(
            uow,
            factories.restock(op[1], f"PO{i}", op[2], (NOW.date() + dt.timedelta(days=op[3])).isoformat()),
            shop,
        )
    else:
        _, sku, allowed, lead, promise_days, release = op
        run(
            uow,
            factories.policy(
                sku,
                backorders_allowed=allowed,
                lead_time_days=lead,
                max_promise_days=promise_days,
                available_from=NOW.date() + dt.timedelta(days=release) if release is not None else None,
            ),
            shop,
        )


@settings(max_examples=examples(200), deadline=None)
@given(past=history, cart=carts, scope=st.sampled_from(list(ShipCompleteScope)))
def test_the_promise_is_what_placing_the_order_then_does(
    past: list[tuple[Any, ...]], cart: tuple[Any, ...], scope: ShipCompleteScope
) -> None:
    shop = ShopPolicy(ship_complete_scope=scope)
    uow = FakeUnitOfWork()
    for i, op in enumerate(past):
        play(uow, i, op, shop)
    state: FakeState = uow.state
    asked = as_cart(cart)
    lines, tier, service, split, _ = cart
    need_by = asked.need_by
    before = state.copy()
    promised = promise(asked, MemoryStore(state), shop, NOW, order_id="CART")
    assert state == before  # a promise changes nothing

    placed = FakeUnitOfWork(state)
    record = factories.order(
        "CART",
        NOW.isoformat(),
        lines,
        customer_id="shopper",
        customer_tier=str(tier),
        shipping_service=str(service),
        need_by=need_by,
        split_preference=str(split) if split else None,
    )
    run(placed, record, shop)
    after = {key[1]: line for key, line in placed.state.lines.items() if key[0] == "CART"}
    for line in promised.lines:
        real = after[line.line_id]
        assert line.ships_now == real.allocated
        assert line.rejected == real.rejected
        assert line.backordered == real.wanted - real.allocated
        if line.backordered:  # a line held for the rest of its order ships with it: the date the order is told
            told = placed.state.told.get("CART")
            assert line.expected_ship_date == (told if real.held else real.expected_ship_date)
        if line.rank is not None:  # its place in its SKU's queue once placed, counted from the queue itself
            queue = serving_order(FakeUnitOfWork(placed.state), shop, line.sku, NOW).queue
            assert queue[line.rank - 1].order_id == "CART" and queue[line.rank - 1].line_id == line.line_id
    if all(line.accepted for line in promised.lines):
        assert not any(line.rejected for line in promised.lines)
    if any(line.backordered for line in promised.lines):  # the date the customer is told, once placed
        assert promised.ship_complete_date == placed.state.told.get("CART")


def test_a_line_held_for_the_rest_of_its_order_is_promised_the_orders_date() -> None:
    # Ship complete, for the whole order: the A units on hand wait for the B that is due, and ship with it.
    shop = ShopPolicy(ship_complete_scope=ShipCompleteScope.ORDER)
    uow = FakeUnitOfWork()
    run(uow, factories.receipt("R", "A", 2), shop)
    run(uow, factories.restock("B", "PO-1", 5, "2026-01-30"), shop)
    split = SplitPreference.SHIP_COMPLETE
    cart = as_cart(([("A", 2), ("B", 1)], CustomerTier.STANDARD, ShippingService.STANDARD, split, None))
    promised = promise(cart, MemoryStore(uow.state), shop, NOW, order_id="CART")

    placed = FakeUnitOfWork(uow.state)
    run(placed, factories.order("CART", NOW.isoformat(), [("A", 2), ("B", 1)], split_preference="SHIP_COMPLETE"), shop)
    told = placed.state.told["CART"]
    assert told == dt.date(2026, 2, 2)  # B's date (its purchase order's, with the supplier's margin)
    assert placed.state.lines[("CART", "L1")].held
    assert [(line.line_id, line.expected_ship_date) for line in promised.lines] == [("L1", told), ("L2", told)]
    assert promised.ship_complete_date == told


@settings(max_examples=examples(200), deadline=None)
@given(past=history, asked=st.lists(carts, min_size=1, max_size=4), max_lines=st.integers(0, 12))
def test_a_promise_on_kept_queues_is_the_promise_on_the_store(
    past: list[tuple[Any, ...]], asked: list[tuple[Any, ...]], max_lines: int
) -> None:
    """Promises share queue copies while orders, receipts, restocks and policies change the store and time
    goes on (a day per step: kept serving orders expire): each equals the promise made on the store alone."""
    shop = ShopPolicy()
    uow = FakeUnitOfWork()
    copies = QueueCopies(max_lines)
    for i, op in enumerate([None, *past]):
        if op is not None:
            play(uow, i, op, shop)
        now = NOW + dt.timedelta(days=i, hours=i)
        for n, cart in enumerate(asked):
            store = MemoryStore(uow.state)
            kept = promise(as_cart(cart), store, shop, now, order_id=f"CART{n}", copies=copies)
            fresh = promise(as_cart(cart), store, shop, now, order_id=f"CART{n}")
            assert kept == fresh
    assert copies.hits + copies.misses > 0
