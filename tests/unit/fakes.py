"""An in-memory UnitOfWork and ReadModel over one state, so handlers and views can be tested without a database."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests import factories
from worker.domain.events import OutboundEvent
from worker.domain.model import WAITING, Backorder, OrderLineState, OrderOutcome
from worker.domain.policy import ProductPolicy, ShopPolicy
from worker.service.book import Book
from worker.service.commands import Command
from worker.service.handlers import FillsLeft, Outcome, give_more, handle
from worker.service.messages import InboundMessage, RejectedMessage
from worker.service.ports import (
    Changes,
    Decision,
    Delivery,
    Fact,
    KeptPolicy,
    KeptRestock,
    Loaded,
    NewOrder,
    PendingCancellation,
    PlanStep,
    SkuBacklog,
    StateFigures,
    StoreRefused,
    StoreUnavailable,
    UnitOfWork,
    Wanted,
    load_each,
)


@dataclass
class FakeState:
    """What a database would hold, in dicts."""

    facts: dict[tuple[str, str], bytes] = field(default_factory=dict)
    lines: dict[tuple[str, str], OrderLineState] = field(default_factory=dict)
    orders: dict[str, NewOrder] = field(default_factory=dict)
    policies: dict[str, KeptPolicy] = field(default_factory=dict)
    pending: dict[str, list[PendingCancellation]] = field(default_factory=dict)
    available: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    shipments: list[tuple[Decision, str | None]] = field(default_factory=list)
    restocks: dict[tuple[str, str], KeptRestock] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    told: dict[str, dt.date | None] = field(default_factory=dict)
    updates: set[tuple[str, int]] = field(default_factory=set)
    outcomes: dict[str, OrderOutcome] = field(default_factory=dict)
    outbox: list[OutboundEvent] = field(default_factory=list)
    dead: list[tuple[InboundMessage, RejectedMessage]] = field(default_factory=list)
    queue_versions: dict[str, int] = field(default_factory=dict)
    promised: dict[str, int] = field(default_factory=dict)
    plans: dict[tuple[str, int], PlanStep] = field(default_factory=dict)
    receipts: set[str] = field(default_factory=set)
    dispatched: set[str] = field(default_factory=set)

    def copy(self) -> FakeState:
        """A copy for a transaction to work on: each container copied, not what it holds, which is immutable (frozen
        dataclasses, tuples, strings), except the lists of `pending`, which a save appends to."""
        containers = {f.name: copy.copy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "pending"}
        return FakeState(**containers, pending={order_id: list(waiting) for order_id, waiting in self.pending.items()})


class MemoryStore:
    """The Store port over a FakeState: loads copy out of the dicts, a save writes into them."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    def lock_orders(self, order_ids: Sequence[str]) -> None:
        pass

    def lock_stock(self, skus: Sequence[str]) -> dict[str, int]:
        return {sku: self.state.available.setdefault(sku, 0) for sku in skus}

    def stock(self, skus: Sequence[str]) -> dict[str, int]:
        return {sku: self.state.available.get(sku, 0) for sku in skus}

    def queue_versions(self, skus: Sequence[str]) -> dict[str, int]:
        return {sku: self.state.queue_versions[sku] for sku in skus if sku in self.state.queue_versions}

    def skus_of_orders(self, order_ids: Sequence[str]) -> set[str]:
        return {line.sku for line in self.state.lines.values() if line.order_id in order_ids}

    def orders_given(self, cause: str, among: Collection[str] | None = None) -> set[str]:
        given = {decision.order_id for decision, _ in self.state.shipments if decision.cause == cause}
        return given if among is None else given & set(among)

    def plan(self, cause: str) -> list[PlanStep]:
        found = [step for (of, _), step in sorted(self.state.plans.items()) if of == cause]
        return [dataclasses.replace(step, lines=None) for step in found]  # as the database gives them

    def promised(self, skus: Sequence[str]) -> dict[str, frozenset[tuple[str, str]]]:
        found: dict[str, set[tuple[str, str]]] = {}
        for step in self.state.plans.values():
            if step.sku in skus:
                found.setdefault(step.sku, set()).update((o, line) for o, line, _ in step.lines or ())
        return {sku: frozenset(keys) for sku, keys in found.items()}

    def step_lines(self, cause: str, step: int) -> tuple[tuple[str, str, int], ...]:
        kept = self.state.plans.get((cause, step))
        return () if kept is None or kept.lines is None else kept.lines

    def hold_orders(self, order_ids: Sequence[str]) -> list[OrderLineState]:
        return self.lines(orders=order_ids)

    def hold_free_orders(self, order_ids: Sequence[str]) -> tuple[set[str], list[OrderLineState]]:
        return set(order_ids), self.lines(orders=order_ids)  # one transaction at a time: every order is free

    def lock_sweep(self, wait: bool) -> bool:
        return True

    def claim_facts(self, facts: Sequence[Fact]) -> dict[tuple[str, str], bytes]:
        seen: dict[tuple[str, str], bytes] = {}
        for fact in facts:
            key = (fact.kind, fact.natural_key)
            if key in self.state.facts:
                seen[key] = self.state.facts[key]
            else:
                self.state.facts[key] = fact.content_hash
        return seen

    def lines(self, *, orders: Sequence[str] = (), every_waiting: bool = False) -> list[OrderLineState]:
        wanted = set(orders)
        return [
            line
            for line in self.state.lines.values()
            if line.order_id in wanted or (every_waiting and (line.status in WAITING or line.reserved > 0))
        ]

    def queues(self, skus: Sequence[str]) -> dict[str, Mapping[tuple[str, str], OrderLineState]]:
        found: dict[str, dict[tuple[str, str], OrderLineState]] = {sku: {} for sku in skus}
        for key, line in self.state.lines.items():
            if line.sku in found and line.status in WAITING:
                found[line.sku][key] = line
        return dict(found)

    def eta_told(self, order_ids: Sequence[str]) -> dict[str, dt.date | None]:
        return {o: self.state.told.get(o) for o in order_ids}

    def customer_lines(self, customer_id: str, sku: str) -> list[OrderLineState]:
        return [
            line
            for line in self.state.lines.values()
            if line.customer_id == customer_id and line.sku == sku and line.wanted > line.allocated
        ]

    def skus_with_expected_dates(self, skus: Sequence[str]) -> set[str]:
        return {
            line.sku
            for line in self.state.lines.values()
            if line.sku in skus and line.status in WAITING and line.expected_ship_date is not None
        }

    def load(self, wanted: Wanted) -> Loaded:
        return load_each(self, wanted)

    def policies(self, skus: Sequence[str]) -> list[KeptPolicy]:
        return [self.state.policies[sku] for sku in skus if sku in self.state.policies]

    def restocks(self, skus: Sequence[str]) -> list[KeptRestock]:
        return [row for (_, sku), row in self.state.restocks.items() if sku in skus]

    def deliveries(self, supplier_ids: Sequence[str], last: int) -> list[Delivery]:
        out: list[Delivery] = []
        for supplier in supplier_ids:
            mine = [d for d in self.state.deliveries if d.supplier_id == supplier]
            out += sorted(mine, key=lambda d: (-d.received_on.toordinal(), d.receipt_id))[:last]
        return out

    def pending_cancellations(self, order_ids: Sequence[str]) -> list[PendingCancellation]:
        return [row for o in order_ids for row in self.state.pending.get(o, [])]

    def status_updates(self, order_ids: Sequence[str]) -> set[tuple[str, int]]:
        return {(o, step) for o, step in self.state.updates if o in order_ids}

    def shipment(self, shipment_id: str, order_id: str) -> dict[str, int]:
        units: dict[str, int] = {}
        for decision, shipment in self.state.shipments:
            if shipment == shipment_id and decision.order_id == order_id and decision.shipped:
                units[decision.line_id] = units.get(decision.line_id, 0) + decision.shipped
        return units

    def dead_letter(
        self, message: InboundMessage, error: RejectedMessage, at: dt.datetime, caused_at: dt.datetime | None
    ) -> bool:
        if any(
            m.topic == message.topic and m.offset == message.offset and m.partition == message.partition
            for m, _ in self.state.dead
        ):
            return False
        self.state.dead.append((message, error))
        return True

    def save(self, changes: Changes) -> None:
        self._refuse_what_postgresql_refuses(changes)
        state = self.state
        for key in changes.facts_unclaimed:
            del state.facts[key]
        for new in changes.new_orders:
            assert new.order.order_id not in state.orders, "an order is inserted once"
            state.orders[new.order.order_id] = new
        state.outcomes.update(changes.outcomes)
        state.told.update(changes.eta_told)
        for line in changes.new_lines + changes.changed_lines:
            assert 0 <= line.allocated + line.reserved + line.rejected + line.cancelled <= line.ordered
            state.lines[(line.order_id, line.line_id)] = line
        for sku, (available, received, promised) in changes.stock.items():
            assert available >= 0
            state.available[sku] = available
            state.received[sku] = state.received.get(sku, 0) + received
            if promised:
                state.promised[sku] = state.promised.get(sku, 0) + promised
                assert state.promised[sku] >= 0
                if not state.promised[sku]:
                    del state.promised[sku]
        for step in changes.plans_added:
            assert (step.cause, step.step) not in state.plans, "a step is planned once"
            state.plans[(step.cause, step.step)] = step
        for taken in changes.plans_taken:
            del state.plans[taken]
        state.shipments += changes.allocations
        state.receipts.update(receipt.receipt_id for receipt, _ in changes.receipts)
        state.dispatched.update(dispatch.shipment_id for dispatch in changes.dispatches)
        for policy in changes.policies:
            state.policies[policy.sku] = policy
        for restock in changes.restocks:
            state.restocks[(restock.restock.purchase_order_id, restock.sku)] = restock
        state.deliveries += changes.deliveries
        for pending in changes.pending_added:
            state.pending.setdefault(pending.cancellation.order_id, []).append(pending)
        for order_id in changes.pending_applied:
            state.pending.pop(order_id, None)
        state.updates.update(changes.status_updates)
        state.outbox += [event for event, _ in changes.events]
        for sku in changes.queue_skus:
            state.queue_versions[sku] = state.queue_versions.get(sku, 0) + 1

    def _refuse_what_postgresql_refuses(self, changes: Changes) -> None:
        """The keys the schema holds unique, refused as PostgreSQL refuses them (before anything is written), so
        that a defect that writes one twice fails here as it would in production."""
        state = self.state

        def once(kind: str, keys: Sequence[object], kept: Collection[object]) -> None:
            if again := [key for key in keys if key in kept] or [k for k, n in Counter(keys).items() if n > 1]:
                raise StoreRefused(f"UniqueViolation: {kind} {again[0]} again")

        once("order_line", [(line.order_id, line.line_id) for line in changes.new_lines], state.lines)
        given = {(d.cause, d.order_id, d.line_id) for d, _ in state.shipments}
        once("allocation", [(d.cause, d.order_id, d.line_id) for d, _ in changes.allocations], given)
        once("stock_receipt", [receipt.receipt_id for receipt, _ in changes.receipts], state.receipts)
        once("shipment_dispatch", [dispatch.shipment_id for dispatch in changes.dispatches], state.dispatched)


class FakeUnitOfWork(Book):
    """The real unit of work over a MemoryStore. Its `state` is what has been saved: reading it saves first,
    and what was loaded is loaded again afterwards (a test may change the state in between)."""

    def __init__(self, state: FakeState | None = None) -> None:
        self._memory = MemoryStore(state or FakeState())
        super().__init__(self._memory)

    @property
    def state(self) -> FakeState:
        self.save()
        return self._memory.state


def handle_record(uow: UnitOfWork, record: dict[str, Any], shop: ShopPolicy, now: dt.datetime) -> Outcome:
    """Apply one inbound record through the real handler, its SKUs locked first as the consumer locks them."""
    command = factories.command(record)
    uow.lock_stock(command.skus | uow.skus_of_orders(command.orders))
    return apply(command, uow, shop, now)


def apply(command: Command, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime) -> Outcome:
    """`handle`, with a receipt's further steps (`give_more`) in the same unit of work."""
    done = handle(command, uow, shop, now)
    while isinstance(done, FillsLeft):
        done = give_more(done, uow, shop, now)
    return done


class FakeReadModel:
    """The read side over the same FakeState as a FakeUnitOfWork: it sees what that one has written.

    The report's figures are aggregates the SQL computes; they are tested against PostgreSQL
    (tests/integration/test_observability.py), not here."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    def waiting_lines(self, sku: str) -> Sequence[Backorder]:
        return [line.as_backorder() for line in self.state.lines.values() if line.sku == sku and line.status in WAITING]

    def policy(self, sku: str) -> ProductPolicy | None:
        kept = self.state.policies.get(sku)
        return kept.policy if kept else None

    def promised_lines(self, sku: str) -> dict[tuple[str, str], int]:
        promised: Counter[tuple[str, str]] = Counter()
        for step in self.state.plans.values():
            if step.sku == sku:
                promised.update({(order_id, line_id): units for order_id, line_id, units in step.lines or ()})
        return dict(promised)

    def decisions(
        self, *, order_id: str | None = None, sku: str | None = None, cause: str | None = None
    ) -> list[Decision]:
        return [
            d
            for d, _ in self.state.shipments
            if (order_id is None or d.order_id == order_id)
            and (sku is None or d.sku == sku)
            and (cause is None or d.cause == cause)
        ]

    def state_figures(self) -> StateFigures:
        raise NotImplementedError("tested against PostgreSQL")

    def sku_backlog(self) -> list[SkuBacklog]:
        raise NotImplementedError("tested against PostgreSQL")

    def cancelled_backorders(self) -> tuple[int, int]:
        raise NotImplementedError("tested against PostgreSQL")


class FakeUnitOfWorkFactory:
    """Transactions over one FakeState: a block that ends normally commits, one that raises leaves no trace.

    `refuse` makes a unit of work raise while it locks what a batch names, as a database raises for a
    value it cannot hold; `unavailable` makes every unit of work fail as a database that cannot be reached.
    """

    def __init__(self, state: FakeState | None = None) -> None:
        self.state = state or FakeState()
        self.refuse: Callable[[str], bool] = lambda name: False
        self.unavailable = False
        self.transactions = 0

    @contextmanager
    def __call__(self) -> Iterator[UnitOfWork]:
        self.transactions += 1
        if self.unavailable:
            raise StoreUnavailable("connection refused")
        working = self.state.copy()
        uow = _Refusing(working, self.refuse)
        yield uow
        uow.save()
        self.state = working


class _Refusing(FakeUnitOfWork):
    def __init__(self, state: FakeState, refuse: Callable[[str], bool]) -> None:
        super().__init__(state)
        self._refuse = refuse

    def lock_orders(self, order_ids: Iterable[str]) -> None:
        self._check(order_ids)

    def lock_stock(self, skus: Iterable[str]) -> None:
        skus = list(skus)
        self._check(skus)
        super().lock_stock(skus)

    def _check(self, names: Iterable[str]) -> None:
        for name in names:
            if self._refuse(name):
                raise ValueError(f"the store cannot hold {name!r}")
