"""The operators' read side over the in-memory fakes: the queue in serving order, a simulated receipt."""

from __future__ import annotations

import datetime as dt

import pytest

from tests import factories
from tests.unit.fakes import FakeReadModel, FakeState, FakeUnitOfWork, handle_record
from worker.domain.policy import ShopPolicy
from worker.service import commands, handlers
from worker.service.handlers import handle
from worker.service.ports import ReadModel
from worker.service.views import queue, simulate_receipt

NOW = dt.datetime(2026, 1, 20, 12, tzinfo=dt.UTC)
SHOP = ShopPolicy()


def placed(*orders: tuple[str, str, int]) -> FakeState:
    """A state in which each (order id, placed on, units of SKU) waits: nothing is in stock."""
    uow = FakeUnitOfWork()
    for order_id, day, units in orders:
        command = commands.command_for(
            "backorder.OrderCreated", "backorder.OrderCreated", factories.order(order_id, day, [("SKU", units)])
        )
        uow.lock_stock(command.skus)
        handle(command, uow, SHOP, NOW)
    return uow.state


def test_the_queue_lists_the_waiting_lines_in_the_order_units_would_go_to_them() -> None:
    read: ReadModel = FakeReadModel(placed(("late", "2026-01-09", 2), ("early", "2026-01-02", 3)))
    entries = queue(read, "SKU", SHOP, NOW).entries
    assert [(e.position, e.order_id, e.wants) for e in entries] == [(1, "early", 3), (2, "late", 2)]
    assert entries[0].waited == NOW - dt.datetime(2026, 1, 2, tzinfo=dt.UTC)


def test_the_queue_leaves_out_the_lines_a_receipt_given_in_steps_has_promised_units_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A receipt for five lines in steps of two: once its plan is committed the next units go past those lines, to
    an order placed after it; each step given takes its lines off the promised ones."""
    monkeypatch.setattr(handlers, "FILLS_PER_SAVE", 2)
    state = placed(*((f"O-{i}", f"2026-01-0{i + 1}", 1) for i in range(5)), ("extra", "2026-01-09", 1))
    uow = FakeUnitOfWork(state)
    receipt = commands.command_for(
        "backorder.InventoryReceived", "backorder.InventoryReceived", factories.receipt("R-1", "SKU", 5)
    )
    uow.lock_stock(receipt.skus)
    left = handle(receipt, uow, SHOP, NOW)
    read = FakeReadModel(state)

    seen = queue(read, "SKU", SHOP, NOW)
    assert [(e.position, e.order_id) for e in seen.entries] == [(1, "extra")]
    assert (seen.promised_lines, seen.promised_units) == (5, 5)

    assert isinstance(left, handlers.FillsLeft)
    handlers.give_more(left, uow, SHOP, NOW)
    seen = queue(read, "SKU", SHOP, NOW)
    assert [e.order_id for e in seen.entries] == ["extra"]
    assert (seen.promised_lines, seen.promised_units) == (3, 3)


def test_a_simulated_receipt_reads_back_the_decisions_of_its_own_transaction() -> None:
    state = placed(("late", "2026-01-09", 2), ("early", "2026-01-02", 3))
    simulated = simulate_receipt(FakeUnitOfWork(state), FakeReadModel(state), "SKU", 4, SHOP, NOW)
    decisions = simulated.decisions
    assert [(d.order_id, d.quantity) for d in decisions] == [("early", 3), ("late", 1)]
    assert {d.cause for d in decisions} == {decisions[0].cause}  # only this receipt's decisions
    assert (simulated.on_hand_before, simulated.on_hand_after) == (0, 0)


def test_a_simulated_deep_receipt_reads_back_every_step_of_its_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """A receipt that fills more lines than a step gives commits a plan first and gives nothing itself: the
    simulation gives its steps in the same transaction, so that every decision is read back."""
    monkeypatch.setattr(handlers, "FILLS_PER_SAVE", 2)
    state = placed(*((f"O-{i}", f"2026-01-0{i + 1}", 1) for i in range(5)))
    decisions = simulate_receipt(FakeUnitOfWork(state), FakeReadModel(state), "SKU", 5, SHOP, NOW).decisions
    assert sorted(d.order_id for d in decisions) == [f"O-{i}" for i in range(5)]


def test_a_simulated_receipt_says_what_is_on_hand_before_and_after_it() -> None:
    # Held units of a pre-order product whose release has come, not served by a sweep yet: a receipt of 1 gives
    # them out with its own unit; "left available" was the receipt's units less what was given (1 - 3).
    uow = FakeUnitOfWork()
    release = NOW - dt.timedelta(hours=1)
    handle_record(uow, factories.policy("PRE", available_from=release.date()), SHOP, release - dt.timedelta(days=9))
    handle_record(uow, factories.receipt("R-0", "PRE", 2), SHOP, release - dt.timedelta(days=2))
    handle_record(uow, factories.order("pre", "2026-01-05", [("PRE", 3)]), SHOP, release - dt.timedelta(days=9))
    simulated = simulate_receipt(FakeUnitOfWork(uow.state), FakeReadModel(uow.state), "PRE", 1, SHOP, NOW)
    assert [(d.order_id, d.quantity) for d in simulated.decisions] == [("pre", 3)]
    assert (simulated.on_hand_before, simulated.on_hand_after) == (2, 0)


def test_the_queue_of_a_pre_order_product_is_ranked_as_the_release_will_serve_it() -> None:
    # A pre-order waits from the release, not from its order: the standard one placed weeks earlier is not
    # promoted past the starvation limit above the VIP, in the view as in the rules.
    uow = FakeUnitOfWork()
    handle_record(uow, factories.policy("PRE", available_from=dt.date(2026, 2, 15)), SHOP, NOW)
    handle_record(uow, factories.order("old-standard", "2025-12-20", [("PRE", 1)]), SHOP, NOW)
    handle_record(uow, factories.order("new-vip", "2026-01-19", [("PRE", 1)], customer_tier="VIP"), SHOP, NOW)
    served = [line.order_id for line in handlers.serving_order(FakeUnitOfWork(uow.state), SHOP, "PRE", NOW).queue]
    shown = queue(FakeReadModel(uow.state), "PRE", SHOP, NOW)
    assert [e.order_id for e in shown.entries] == served == ["new-vip", "old-standard"]
    assert [e.rank for e in shown.entries] == [3, 5]
