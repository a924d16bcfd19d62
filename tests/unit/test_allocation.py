"""The allocation core: properties over generated queues, and the business documents' example."""

from __future__ import annotations

import datetime as dt
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests import examples
from worker.domain.allocation import Allocation, ShipCompleteMode, allocate
from worker.domain.model import Backorder, CustomerTier, LineStatus, ShippingService, SplitPreference
from worker.domain.priority import PriorityRules, in_priority_order

NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
FIFO = PriorityRules(starvation_after=None)
RULES = PriorityRules()


def backorder(
    order_id: str,
    day: int,
    quantity: int,
    allocated: int = 0,
    line_id: str = "L1",
    *,
    split: SplitPreference = SplitPreference.SHIP_AVAILABLE_NOW,
    reserved: int = 0,
    tier: CustomerTier = CustomerTier.STANDARD,
    service: ShippingService = ShippingService.STANDARD,
    need_by: dt.date | None = None,
) -> Backorder:
    return Backorder(
        order_id=order_id,
        line_id=line_id,
        sku="SKU",
        product_name="Widget",
        customer_id="C",
        customer_tier=tier,
        shipping_service=service,
        need_by=need_by,
        order_units=quantity,
        split=split,
        placed_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=day),
        quantity=quantity,
        allocated=allocated,
        reserved=reserved,
    )


@st.composite
def lines(draw: st.DrawFn, i: int) -> Backorder:
    quantity = draw(st.integers(min_value=1, max_value=40))
    allocated = draw(st.integers(min_value=0, max_value=quantity - 1))
    split = draw(st.sampled_from(SplitPreference))
    reserved = 0
    if split is SplitPreference.SHIP_COMPLETE:
        allocated = 0
        reserved = draw(st.integers(min_value=0, max_value=quantity - 1))
    return backorder(
        f"O-{draw(st.integers(0, 9))}-{i}",
        draw(st.integers(min_value=0, max_value=70)),
        quantity,
        allocated,
        f"L{i % 3}",
        split=split,
        reserved=reserved,
        tier=draw(st.sampled_from(CustomerTier)),
        service=draw(st.sampled_from(ShippingService)),
        need_by=draw(st.none() | st.dates(dt.date(2026, 2, 20), dt.date(2026, 3, 20))),
    )


queues = st.integers(min_value=0, max_value=20).flatmap(lambda n: st.tuples(*(lines(i) for i in range(n))))
modes = st.sampled_from(ShipCompleteMode)
units_ = st.integers(min_value=0, max_value=400)


def run(queue: tuple[Backorder, ...], units: int, mode: ShipCompleteMode) -> Allocation:
    return allocate(queue, units, rules=RULES, mode=mode, now=NOW)


@settings(max_examples=examples(1200))
@given(queue=queues, units=units_, mode=modes)
def test_every_unit_ends_in_exactly_one_place(queue: tuple[Backorder, ...], units: int, mode: ShipCompleteMode) -> None:
    result = run(queue, units, mode)
    assert result.units_given + result.units_left == units
    assert result.units_left >= 0
    for fill in result.fills:
        b = fill.backorder
        assert 0 <= fill.quantity <= b.open_quantity
        assert fill.allocated_after >= b.allocated and fill.reserved_after >= 0
        # What the line holds grows by exactly what it was given: units move, none appear or vanish.
        assert (fill.allocated_after + fill.reserved_after) - (b.allocated + b.reserved) == fill.quantity
        assert fill.allocated_after + fill.reserved_after <= b.quantity
        if b.split is SplitPreference.SHIP_COMPLETE:
            assert fill.ships_now in (0, b.quantity - b.allocated)  # all at once or nothing
    assert len({(f.backorder.order_id, f.backorder.line_id) for f in result.fills}) == len(result.fills)


@settings(max_examples=examples(1200))
@given(queue=queues, units=units_, mode=modes)
def test_a_line_is_passed_over_only_by_the_documented_ship_complete_rule(
    queue: tuple[Backorder, ...], units: int, mode: ShipCompleteMode
) -> None:
    result = run(queue, units, mode)
    given_ = {(f.backorder.order_id, f.backorder.line_id): f.quantity for f in result.fills}
    left = units
    served = in_priority_order(queue, RULES, NOW)
    for i, (line, _) in enumerate(served):
        got = given_.get((line.order_id, line.line_id), 0)
        later_got = any(given_.get((b.order_id, b.line_id), 0) for b, _ in served[i + 1 :])
        if later_got and got < line.open_quantity:
            # Only a ship-complete line that could not be completed, in FILL mode, lets others pass.
            assert mode is ShipCompleteMode.FILL
            assert line.split is SplitPreference.SHIP_COMPLETE and got == 0 and left < line.open_quantity
        if mode is ShipCompleteMode.HOLD and got < line.open_quantity:
            assert not later_got  # strict: nothing passes a line that still wants units
        left -= got


@settings(max_examples=examples(500))
@given(queue=queues, units=units_, mode=modes, seed=st.integers())
def test_same_input_same_output_whatever_order_the_queue_comes_in(
    queue: tuple[Backorder, ...], units: int, mode: ShipCompleteMode, seed: int
) -> None:
    shuffled = list(queue)
    random.Random(seed).shuffle(shuffled)
    assert run(queue, units, mode) == run(tuple(shuffled), units, mode)


def test_the_business_example_fills_oldest_first_and_ships_what_is_left() -> None:
    queue = [backorder("102", 8, 20), backorder("100", 5, 20), backorder("101", 6, 20)]
    first = allocate(queue, 50, rules=FIFO, mode=ShipCompleteMode.HOLD, now=NOW)
    assert [(f.backorder.order_id, f.quantity, f.ships_now, f.status_after) for f in first.fills] == [
        ("100", 20, 20, LineStatus.ALLOCATED),
        ("101", 20, 20, LineStatus.ALLOCATED),
        ("102", 10, 10, LineStatus.PARTIALLY_ALLOCATED),
    ]
    assert first.units_left == 0
    second = allocate([backorder("102", 8, 20, allocated=10)], 10, rules=FIFO, mode=ShipCompleteMode.HOLD, now=NOW)
    assert [(f.backorder.order_id, f.quantity, f.status_after) for f in second.fills] == [
        ("102", 10, LineStatus.ALLOCATED)
    ]


def test_ship_complete_holds_units_then_ships_them_all_together() -> None:
    line = backorder("1", 0, 5, split=SplitPreference.SHIP_COMPLETE)
    later = backorder("2", 1, 5)
    held = allocate([line, later], 3, rules=FIFO, mode=ShipCompleteMode.HOLD, now=NOW)
    [fill] = held.fills
    assert (fill.quantity, fill.ships_now, fill.reserved_after, fill.status_after) == (
        3,
        0,
        3,
        LineStatus.PARTIALLY_ALLOCATED,
    )
    done = allocate(
        [backorder("1", 0, 5, split=SplitPreference.SHIP_COMPLETE, reserved=3)],
        2,
        rules=FIFO,
        mode=ShipCompleteMode.HOLD,
        now=NOW,
    )
    assert [(f.quantity, f.ships_now, f.reserved_after) for f in done.fills] == [(2, 5, 0)]


def test_fill_mode_lets_the_next_line_that_can_ship_use_the_units() -> None:
    head = backorder("1", 0, 5, split=SplitPreference.SHIP_COMPLETE)
    result = allocate(
        [head, backorder("2", 1, 2), backorder("3", 2, 4)], 3, rules=FIFO, mode=ShipCompleteMode.FILL, now=NOW
    )
    assert [(f.backorder.order_id, f.quantity) for f in result.fills] == [("2", 2), ("3", 1)]


def test_units_beyond_the_queue_stay_available() -> None:
    assert allocate([backorder("1", 0, 3)], 10, rules=FIFO, mode=ShipCompleteMode.HOLD, now=NOW).units_left == 7
    assert allocate([], 10, rules=FIFO, mode=ShipCompleteMode.HOLD, now=NOW).units_left == 10
