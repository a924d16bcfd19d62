"""The unit of work in memory: what it asks of its store and what it hands back to be saved."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from tests import factories
from tests.unit.fakes import FakeState, MemoryStore, apply
from worker.domain.model import LineStatus, OrderLineState
from worker.domain.policy import ShopPolicy
from worker.service.book import Book
from worker.service.handlers import Outcome
from worker.service.messages import InvalidEvent
from worker.service.ports import Changes

NOW = dt.datetime(2026, 1, 20, 12, tzinfo=dt.UTC)
SHOP = ShopPolicy()
command = factories.command


class CountingStore(MemoryStore):
    """Notes every order whose rows it was asked to hold, and every save."""

    def __init__(self, state: FakeState) -> None:
        super().__init__(state)
        self.held: list[list[str]] = []
        self.saves: list[Changes] = []

    def hold_orders(self, order_ids: Sequence[str]) -> list[OrderLineState]:
        self.held.append(list(order_ids))
        return super().hold_orders(order_ids)

    def save(self, changes: Changes) -> None:
        self.saves.append(changes)
        super().save(changes)


def transaction(store: MemoryStore, records: list[dict[str, Any]]) -> list[Outcome | Exception]:
    """The records as one batch: prepared together, each in its savepoint, saved once."""
    book = Book(store)
    batch = [command(record) for record in records]
    book.prepare(batch)
    outcomes: list[Outcome | Exception] = []
    for item in batch:
        try:
            with book.savepoint():
                outcomes.append(apply(item, book, SHOP, NOW))
        except InvalidEvent as exc:
            outcomes.append(exc)
    book.save()
    return outcomes


def test_a_new_order_is_saved_once_in_its_final_state() -> None:
    store = CountingStore(FakeState())
    transaction(store, [factories.receipt("R-1", "SKU", 3), factories.order("1", "2026-01-10", [("SKU", 5)])])
    [saved] = store.saves
    [line] = saved.new_lines
    assert (line.allocated, line.status, line.backordered) == (3, LineStatus.PARTIALLY_ALLOCATED, True)
    assert saved.changed_lines == []
    assert [n.order.order_id for n in saved.new_orders] == ["1"]
    assert saved.stock == {"SKU": (0, 3, 0)}


def test_a_failed_event_leaves_no_trace_and_gives_its_fact_back() -> None:
    store = CountingStore(FakeState())
    transaction(store, [factories.order("1", "2026-01-10", [("SKU", 2)])])
    never_requested = factories.shipment("1", "00000000-0000-5000-8000-000000000000")
    [outcome] = transaction(store, [never_requested])
    assert isinstance(outcome, InvalidEvent)
    assert ("shipment", never_requested["shipment_id"]) not in store.state.facts
    last = store.saves[-1]
    assert last.facts_unclaimed == [("shipment", never_requested["shipment_id"])]
    assert last.events == [] and last.dispatches == [] and last.changed_lines == []


def test_the_same_fact_twice_in_one_batch_is_applied_once() -> None:
    store = CountingStore(FakeState())
    record = factories.order("1", "2026-01-10", [("SKU", 2)])
    assert transaction(store, [record, {**record, "event_id": "again"}]) == [Outcome.PROCESSED, Outcome.DUPLICATE]
    assert len(store.saves[-1].new_lines) == 1


def test_an_order_filled_by_the_batch_is_held_and_read_again_unless_the_batch_placed_it() -> None:
    """Another worker may be deciding about the order from another of its lines: its row is held (and its
    lines read again) before anything is decided from them. An order placed in this very transaction exists
    nowhere else yet."""
    store = CountingStore(FakeState())
    transaction(store, [factories.order("1", "2026-01-10", [("A", 1), ("B", 1)])])
    transaction(store, [factories.receipt("R-A", "A", 2), factories.order("2", "2026-01-11", [("A", 1)])])
    assert store.held == [["1"]]
