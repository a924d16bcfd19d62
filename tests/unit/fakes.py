"""An in-memory UnitOfWork and ReadModel over one state, so handlers and views can be tested without a database."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from worker.domain.allocation import Fill
from worker.domain.eta import Eta, ExpectedReceipt
from worker.domain.events import OutboundEvent
from worker.domain.model import (
    WAITING,
    Backorder,
    Cancellation,
    CancelReason,
    LineStatus,
    Order,
    OrderLineState,
    OrderOutcome,
    SplitPreference,
    StockReceipt,
)
from worker.domain.policy import ProductPolicy
from worker.service.messages import InboundMessage, RejectedMessage
from worker.service.ports import Decision, Seen, SkuBacklog, StateFigures, StoreUnavailable, UnitOfWork


@dataclass
class FakeState:
    facts: dict[tuple[str, str], bytes] = field(default_factory=dict)
    lines: dict[tuple[str, str], OrderLineState] = field(default_factory=dict)
    policies: dict[str, tuple[dt.datetime, ProductPolicy]] = field(default_factory=dict)
    pending: dict[str, list[Cancellation]] = field(default_factory=dict)
    available: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    decisions: list[tuple[str, str, str, int, int, str]] = field(default_factory=list)
    decision_log: list[Decision] = field(default_factory=list)
    restocks: dict[tuple[str, str], tuple[dt.datetime, ExpectedReceipt]] = field(default_factory=dict)
    lateness: dict[str, list[int]] = field(default_factory=dict)
    told: dict[str, dt.date | None] = field(default_factory=dict)
    updates: set[tuple[str, int]] = field(default_factory=set)
    outcomes: dict[str, OrderOutcome] = field(default_factory=dict)
    outbox: list[OutboundEvent] = field(default_factory=list)
    dead: list[tuple[InboundMessage, RejectedMessage]] = field(default_factory=list)
    held_orders: set[str] = field(default_factory=set)  # orders held for a decision: no other worker here


class FakeUnitOfWork:
    def __init__(self, state: FakeState | None = None) -> None:
        self.state = state or FakeState()

    def lock_orders(self, order_ids: Iterable[str]) -> None:
        pass

    def hold_orders(self, order_ids: Iterable[str]) -> None:
        self.state.held_orders.update(order_ids)

    def skus_of_orders(self, order_ids: Iterable[str]) -> set[str]:
        wanted = set(order_ids)
        return {line.sku for line in self.state.lines.values() if line.order_id in wanted}

    def caused_by(self, written_at: dt.datetime | None) -> None:
        pass

    def lock_stock(self, skus: Iterable[str]) -> None:
        for sku in skus:
            self.state.available.setdefault(sku, 0)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        before = copy.deepcopy(self.state)
        try:
            yield
        except BaseException:
            self.state = before
            raise

    def remember(self, kind: str, natural_key: str, event_id: str, content_hash: bytes) -> Seen:
        known = self.state.facts.get((kind, natural_key))
        if known is None:
            self.state.facts[(kind, natural_key)] = content_hash
            return Seen.NEW
        return Seen.SAME if known == content_hash else Seen.DIFFERENT

    def policy(self, sku: str) -> ProductPolicy | None:
        found = self.state.policies.get(sku)
        return found[1] if found else None

    def set_policy(self, sku: str, policy: ProductPolicy, decided_at: dt.datetime, event_id: str) -> bool:
        known = self.state.policies.get(sku)
        if known is not None and known[0] >= decided_at:
            return False
        self.state.policies[sku] = (decided_at, policy)
        return True

    def add_order(self, order: Order, event_id: str, splits: Mapping[str, SplitPreference]) -> None:
        units = sum(line.quantity for line in order.lines)
        for line in order.lines:
            self.state.lines[(order.order_id, line.line_id)] = OrderLineState(
                order_id=order.order_id,
                line_id=line.line_id,
                sku=line.sku,
                product_name=line.product_name,
                customer_id=order.customer_id,
                customer_tier=order.customer_tier,
                shipping_service=order.shipping_service,
                need_by=order.need_by,
                order_units=units,
                split=splits[line.line_id],
                placed_at=order.placed_at,
                unit_price_minor=line.unit_price_minor,
                ordered=line.quantity,
                allocated=0,
                reserved=0,
                rejected=0,
                cancelled=0,
                status=LineStatus.BACKORDERED,
            )

    def record_outcome(self, order_id: str, outcome: OrderOutcome, backordered_lines: Iterable[str]) -> None:
        self.state.outcomes[order_id] = outcome

    def order_lines(self, order_ids: Iterable[str]) -> list[OrderLineState]:
        wanted = set(order_ids)
        return sorted(
            (line for line in self.state.lines.values() if line.order_id in wanted),
            key=lambda line: (line.order_id, line.line_id),
        )

    def customer_waiting(self, customer_id: str, sku: str, other_than_order: str) -> int:
        return sum(
            line.wanted - line.allocated
            for line in self.state.lines.values()
            if line.customer_id == customer_id and line.sku == sku and line.order_id != other_than_order
        )

    def reject(self, line: OrderLineState, units: int, reason: str) -> None:
        self.state.lines[(line.order_id, line.line_id)] = dataclasses.replace(
            line, rejected=line.rejected + units, status=line.status_after_rejecting(units), reason=reason
        )

    def cancel(self, line: OrderLineState, units: int, code: CancelReason, reason: str, at: dt.datetime) -> None:
        self.state.available[line.sku] += line.reserved
        status = LineStatus.of(
            line.wanted - units, line.allocated, rejected=line.rejected, cancelled=line.cancelled + units
        )
        self.state.lines[(line.order_id, line.line_id)] = dataclasses.replace(
            line, cancelled=line.cancelled + units, reserved=0, status=status, reason=reason
        )

    def pending_cancellation(self, order_id: str) -> Cancellation | None:
        found = self.state.pending.pop(order_id, [])
        return found[0] if found else None

    def add_pending_cancellation(self, cancellation: Cancellation, event_id: str) -> None:
        self.state.pending.setdefault(cancellation.order_id, []).append(cancellation)

    def add_receipt(self, receipt: StockReceipt, event_id: str) -> None:
        self.state.available[receipt.sku] += receipt.quantity
        self.state.received[receipt.sku] = self.state.received.get(receipt.sku, 0) + receipt.quantity

    def available(self, sku: str) -> int:
        return self.state.available[sku]

    def waiting_lines(self, sku: str) -> Sequence[Backorder]:
        return [line.as_backorder() for line in self.state.lines.values() if line.sku == sku and line.status in WAITING]

    def record_fills(self, fills: Sequence[Fill], shipment_ids: Mapping[str, str], cause: str, at: dt.datetime) -> None:
        for f in fills:
            b = f.backorder
            line = self.state.lines[(b.order_id, b.line_id)]
            status = f.status_after
            reason = line.reason if status in (LineStatus.REJECTED, LineStatus.CANCELLED) else f.reason
            self.state.lines[(b.order_id, b.line_id)] = dataclasses.replace(
                line, allocated=f.allocated_after, reserved=f.reserved_after, status=status, reason=reason
            )
            self.state.decisions.append((cause, b.order_id, b.line_id, f.quantity, f.ships_now, f.priority.reason))
            self.state.decision_log.append(
                Decision(
                    at,
                    cause,
                    b.order_id,
                    b.line_id,
                    b.sku,
                    f.quantity,
                    max(0, f.quantity - f.ships_now),
                    f.ships_now,
                    f.priority.rank,
                    f.priority.reason,
                )
            )
            self.state.available[b.sku] -= f.quantity
            assert self.state.available[b.sku] >= 0

    def expect_restock(self, sku: str, restock: ExpectedReceipt, decided_at: dt.datetime, event_id: str) -> bool:
        known = self.state.restocks.get((restock.purchase_order_id, sku))
        if known is not None and known[0] >= decided_at:
            return False
        self.state.restocks[(restock.purchase_order_id, sku)] = (decided_at, restock)
        return True

    def consume_restock(self, receipt: StockReceipt) -> None:
        key = (receipt.purchase_order_id or "", receipt.sku)
        if key not in self.state.restocks:
            return
        decided_at, restock = self.state.restocks[key]
        self.state.restocks[key] = (
            decided_at,
            dataclasses.replace(restock, quantity=max(0, restock.quantity - receipt.quantity)),
        )
        late = (receipt.received_at.date() - restock.expected_date).days
        self.state.lateness.setdefault(restock.supplier_id, []).append(late)

    def expected_supply(self, sku: str) -> list[ExpectedReceipt]:
        return [r for (_, s), (_, r) in self.state.restocks.items() if s == sku and r.quantity > 0]

    def supplier_lateness(self, supplier_ids: Iterable[str]) -> dict[str, list[int]]:
        return {s: self.state.lateness[s][-10:] for s in supplier_ids if s in self.state.lateness}

    def set_expected_dates(self, etas: Mapping[tuple[str, str], Eta]) -> set[str]:
        changed = set()
        for key, eta in etas.items():
            line = self.state.lines[key]
            if line.expected_ship_date != eta.date:
                self.state.lines[key] = dataclasses.replace(line, expected_ship_date=eta.date)
                changed.add(line.order_id)
        return changed

    def has_expected_dates(self, sku: str) -> bool:
        return any(line.sku == sku and line.waiting and line.expected_ship_date for line in self.state.lines.values())

    def eta_told(self, order_ids: Iterable[str]) -> dict[str, dt.date | None]:
        return {order_id: self.state.told.get(order_id) for order_id in order_ids}

    def tell_eta(self, order_id: str, date: dt.date | None) -> None:
        self.state.told[order_id] = date

    def all_waiting_lines(self) -> list[OrderLineState]:
        return sorted(
            (line for line in self.state.lines.values() if line.waiting), key=lambda line: (line.order_id, line.line_id)
        )

    def claim_status_update(self, order_id: str, step: int) -> bool:
        if (order_id, step) in self.state.updates:
            return False
        self.state.updates.add((order_id, step))
        return True

    def lock_sweep(self, wait: bool) -> bool:
        return True

    def ship(
        self,
        shipment_id: str,
        order_id: str,
        carrier: str,
        tracking_number: str,
        estimated_delivery: dt.date | None,
        at: dt.datetime,
    ) -> dict[str, int]:
        raise NotImplementedError("shipments are tested against PostgreSQL")

    def emit(self, events: Sequence[OutboundEvent]) -> None:
        self.state.outbox.extend(events)

    def dead_letter(self, message: InboundMessage, error: RejectedMessage, at: dt.datetime) -> bool:
        self.state.dead.append((message, error))
        return True


class FakeReadModel:
    """The read side over the same FakeState as a FakeUnitOfWork: it sees what that one has written.

    The report's figures are aggregates the SQL computes; they are tested against PostgreSQL
    (tests/integration/test_observability.py), not here."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    def waiting_lines(self, sku: str) -> Sequence[Backorder]:
        return [line.as_backorder() for line in self.state.lines.values() if line.sku == sku and line.status in WAITING]

    def decisions(
        self, *, order_id: str | None = None, sku: str | None = None, cause: str | None = None
    ) -> list[Decision]:
        return [
            d
            for d in self.state.decision_log
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
        working = copy.deepcopy(self.state)
        yield _Refusing(working, self.refuse)
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
