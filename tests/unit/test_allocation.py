"""The allocation core: properties over generated queues, and the business documents' example."""

from __future__ import annotations

import datetime as dt
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.domain.allocation import allocate
from worker.domain.model import Backorder, LineStatus, ShippingService

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def backorder(order_id: str, day: int, quantity: int, allocated: int = 0, line_id: str = "L1") -> Backorder:
    return Backorder(
        order_id=order_id,
        line_id=line_id,
        sku="SKU",
        product_name="Widget",
        customer_id="C",
        shipping_service=ShippingService.STANDARD,
        placed_at=T0 + dt.timedelta(days=day),
        quantity=quantity,
        allocated=allocated,
    )


@st.composite
def queues(draw: st.DrawFn) -> list[Backorder]:
    size = draw(st.integers(min_value=0, max_value=25))
    out = []
    for i in range(size):
        quantity = draw(st.integers(min_value=1, max_value=50))
        allocated = draw(st.integers(min_value=0, max_value=quantity - 1))
        day = draw(st.integers(min_value=0, max_value=10))  # same days happen: ties go by ids
        out.append(backorder(f"O-{draw(st.integers(0, 9))}-{i}", day, quantity, allocated, f"L{i % 3}"))
    return out


@settings(max_examples=2000)
@given(queue=queues(), units=st.integers(min_value=0, max_value=600))
def test_never_gives_more_than_there_is_nor_more_than_a_line_needs(queue: list[Backorder], units: int) -> None:
    result = allocate(queue, units)
    assert result.units_allocated + result.units_left == units
    assert result.units_allocated <= units
    assert result.units_allocated == min(units, sum(b.open_quantity for b in queue))
    for fill in result.fills:
        assert 0 < fill.quantity <= fill.backorder.open_quantity
    assert len({(f.backorder.order_id, f.backorder.line_id) for f in result.fills}) == len(result.fills)


@settings(max_examples=2000)
@given(queue=queues(), units=st.integers(min_value=0, max_value=600))
def test_an_older_line_is_never_left_waiting_while_a_newer_one_is_served(queue: list[Backorder], units: int) -> None:
    result = allocate(queue, units)
    got = {(f.backorder.order_id, f.backorder.line_id): f.quantity for f in result.fills}
    in_order = sorted(queue, key=lambda b: b.fifo_key)
    for i, older in enumerate(in_order):
        still_short = got.get((older.order_id, older.line_id), 0) < older.open_quantity
        if still_short:
            assert all((newer.order_id, newer.line_id) not in got for newer in in_order[i + 1 :])


@settings(max_examples=500)
@given(queue=queues(), units=st.integers(min_value=0, max_value=600), seed=st.integers())
def test_same_input_same_output_whatever_order_the_queue_comes_in(
    queue: list[Backorder], units: int, seed: int
) -> None:
    shuffled = list(queue)
    random.Random(seed).shuffle(shuffled)
    assert allocate(queue, units) == allocate(shuffled, units)


def test_the_business_example_fills_oldest_first_and_ships_what_is_left() -> None:
    queue = [backorder("102", 8, 20), backorder("100", 5, 20), backorder("101", 6, 20)]
    first = allocate(queue, 50)
    assert [(f.backorder.order_id, f.quantity, f.status_after) for f in first.fills] == [
        ("100", 20, LineStatus.ALLOCATED),
        ("101", 20, LineStatus.ALLOCATED),
        ("102", 10, LineStatus.PARTIALLY_ALLOCATED),
    ]
    assert first.units_left == 0
    second = allocate([backorder("102", 8, 20, allocated=10)], 10)
    assert [(f.backorder.order_id, f.quantity, f.status_after) for f in second.fills] == [
        ("102", 10, LineStatus.ALLOCATED)
    ]


def test_units_beyond_the_queue_stay_available() -> None:
    assert allocate([backorder("1", 0, 3)], 10).units_left == 7
    assert allocate([], 10).units_left == 10
