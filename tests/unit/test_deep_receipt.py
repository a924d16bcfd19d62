"""A receipt that fills more lines than `FILLS_PER_SAVE` is written in steps of whole orders, each one saved
and forgotten before the next is made, so that what the worker holds at once does not grow with the queue.
Held to what one step does: the same lines, stock, decisions and events (in the same order); and a failure
once a step is written fails the transaction rather than being undone in memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import examples, factories
from tests.unit.fakes import FakeState, FakeUnitOfWork, FakeUnitOfWorkFactory, MemoryStore, handle_record
from tests.unit.test_batch import message, run
from worker.domain.allocation import ShipCompleteMode
from worker.domain.eta import EtaRules
from worker.domain.policy import ShipCompleteScope, ShopPolicy
from worker.service import handlers
from worker.service.handlers import Outcome
from worker.service.messages import UnprocessableEvent
from worker.service.ports import Changes

SHOP = ShopPolicy(eta=EtaRules(handling_days=1, default_supplier_margin_days=2))
PLACED = factories.at("2026-01-19")
RECEIVED = factories.at("2026-01-20")

Orders = list[tuple[list[tuple[str, int]], str | None, str]]

orders_strategy = st.lists(
    st.tuples(
        st.lists(st.tuples(st.sampled_from(["SKU-A", "SKU-B"]), st.integers(1, 4)), min_size=1, max_size=3),
        st.sampled_from([None, "SHIP_COMPLETE", "SHIP_AVAILABLE_NOW"]),
        st.sampled_from(["STANDARD", "VIP", "WHOLESALE"]),
    ),
    min_size=1,
    max_size=25,
)


@contextmanager
def steps_of(fills: int) -> Iterator[list[Changes]]:
    """FILLS_PER_SAVE set to `fills`; yields the saves the store is handed meanwhile."""
    saves: list[Changes] = []
    save = MemoryStore.save

    def counted(self: MemoryStore, changes: Changes) -> None:
        saves.append(changes)
        save(self, changes)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(handlers, "FILLS_PER_SAVE", fills)
        patch.setattr(MemoryStore, "save", counted)
        yield saves


def queued(orders: Orders, shop: ShopPolicy, restock: int | None) -> FakeUnitOfWork:
    uow = FakeUnitOfWork()
    if restock is not None:  # dated lines: a line the receipt fills in part may be dated anew
        handle_record(uow, factories.restock("SKU-A", "PO-1", restock, "2026-02-10"), shop, PLACED)
    for i, (lines, split, tier) in enumerate(orders):
        record = factories.order(
            f"O-{i:02d}",
            f"2026-01-{10 + i % 9:02d}",
            lines,
            split_preference=split,
            customer_tier=tier,
            event_id=f"event-O-{i:02d}",  # the same records for both runs compared
        )
        handle_record(uow, record, shop, PLACED)
    uow.save()
    return uow


def received(orders: Orders, units: int, shop: ShopPolicy, restock: int | None, fills: int) -> tuple[FakeState, int]:
    """The state after a receipt of `units` of SKU-A into the orders' queue, FILLS_PER_SAVE being `fills`; and how
    many saves the receipt made."""
    uow = queued(orders, shop, restock)
    with steps_of(fills) as saves:
        handle_record(uow, factories.receipt("R-1", "SKU-A", units, event_id="event-R-1"), shop, RECEIVED)
        uow.save()
    return uow.state, len(saves)


def comparable(state: FakeState) -> dict[str, Any]:
    """The state as one step leaves it. The decisions as a multiset: steps make them in order-id order, one step
    in serving order. Each order's events in their order: an order whose filled line still waits is announced
    after the steps, once that line's date is settled, and the others with their step. Without the queue
    versions: opaque tokens, bumped at every save."""
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    fields["shipments"] = sorted(fields["shipments"], key=repr)
    by_order: dict[str, list[Any]] = {}
    for event in fields["outbox"]:
        by_order.setdefault(event.order_id, []).append(event)
    fields["outbox"] = by_order
    del fields["queue_versions"]
    return fields


@settings(max_examples=examples(300), deadline=None)
@given(
    orders=orders_strategy,
    units=st.integers(1, 60),
    fills=st.integers(1, 4),
    mode=st.sampled_from(ShipCompleteMode),
    scope=st.sampled_from(ShipCompleteScope),
    restock=st.one_of(st.none(), st.integers(1, 30)),
)
def test_a_receipt_written_in_steps_leaves_what_one_step_leaves(
    orders: Orders, units: int, fills: int, mode: ShipCompleteMode, scope: ShipCompleteScope, restock: int | None
) -> None:
    shop = dataclasses.replace(SHOP, ship_complete_mode=mode, ship_complete_scope=scope)
    whole, saves_whole = received(orders, units, shop, restock, 1_000_000)
    stepped, saves_stepped = received(orders, units, shop, restock, fills)

    assert comparable(stepped) == comparable(whole)
    given_lines = {(d.order_id, d.line_id) for d, _ in whole.shipments if d.cause == "inventory-received/R-1"}
    if len(given_lines) > fills:  # so many fills that the receipt went in steps
        assert saves_stepped > saves_whole
    else:
        assert saves_stepped == saves_whole


def test_a_deep_receipt_saves_each_step_as_it_goes() -> None:
    """40 one-line orders of one unit each, and a receipt for all of them, in steps of 15."""
    orders: Orders = [([("SKU-A", 1)], None, "STANDARD") for _ in range(40)]
    uow = queued(orders, SHOP, restock=None)
    with steps_of(15) as saves:
        handle_record(uow, factories.receipt("R-1", "SKU-A", 40), SHOP, RECEIVED)
    # The receipt and its units; then each step's fills and their events (a fulfillment request, a status and a
    # notification an order).
    assert [len(s.changed_lines) for s in saves] == [0, 15, 15, 10]
    assert [len(s.events) for s in saves] == [0, 45, 45, 30]
    assert saves[0].receipts and saves[0].stock == {"SKU-A": (40, 40)}
    assert [s.stock for s in saves[1:]] == [{"SKU-A": (25, 0)}, {"SKU-A": (10, 0)}, {"SKU-A": (0, 0)}]
    assert all(line.status.value == "ALLOCATED" for line in uow.state.lines.values())


def test_an_event_that_fails_once_a_step_is_written_fails_its_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of a receipt that failed after its first step was saved remains; the batch is split and the
    receipt alone dead-lettered, and the order beside it in the batch commits."""
    factory = FakeUnitOfWorkFactory()
    placing = [message(i, "orders", factories.order(f"O-{i:02d}", "2026-01-10", [("SKU-A", 1)])) for i in range(10)]
    assert {r.outcome for r in run(factory, placing)} == {Outcome.PROCESSED}
    before = factory.state
    announce = handlers._announce_fills

    def failing(cause: str, caused_by: str, fills: Any, *args: Any) -> Any:
        if any(f.backorder.order_id == "O-05" for f in fills):  # the second step, whenever it is made
            raise RuntimeError("the second step fails")
        return announce(cause, caused_by, fills, *args)

    monkeypatch.setattr(handlers, "_announce_fills", failing)
    monkeypatch.setattr(handlers, "FILLS_PER_SAVE", 4)
    batch = [
        message(10, "receipts", factories.receipt("R-1", "SKU-A", 10)),
        message(11, "orders", factories.order("O-B", "2026-01-11", [("SKU-B", 1)])),
    ]

    results = run(factory, batch)

    assert [r.outcome for r in results] == [Outcome.DEAD_LETTERED, Outcome.PROCESSED]
    assert isinstance(results[0].error, UnprocessableEvent)
    assert "the second step fails" in str(results[0].error)
    after = factory.state
    assert {key: line for key, line in after.lines.items() if key[0] != "O-B"} == before.lines
    assert ("O-B", "L1") in after.lines
    assert after.available.get("SKU-A", 0) == after.received.get("SKU-A", 0) == 0
    assert not any(d.cause == "inventory-received/R-1" for d, _ in after.shipments)
