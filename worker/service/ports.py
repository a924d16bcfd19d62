"""What the service layer needs from the outside, as protocols. The adapters implement them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from worker.domain.allocation import Fill
from worker.domain.eta import DatedQueue, Eta, ExpectedReceipt
from worker.domain.events import OutboundEvent
from worker.domain.model import (
    Backorder,
    Cancellation,
    CancelReason,
    Order,
    OrderLineState,
    OrderOutcome,
    SplitPreference,
    StockReceipt,
)
from worker.domain.policy import ProductPolicy
from worker.domain.priority import ServingOrder
from worker.service.commands import Command
from worker.service.messages import InboundMessage, RejectedMessage


class Seen(StrEnum):
    NEW = "new"
    SAME = "same"  # the same natural key with the same content: a duplicate
    DIFFERENT = "different"  # the same natural key with other content: a conflict


@dataclass(frozen=True, slots=True)
class Decision:
    """One recorded allocation: units given to a line, of them reserved, units shipped, and why."""

    at: dt.datetime
    cause: str
    order_id: str
    line_id: str
    sku: str
    quantity: int
    reserved: int
    shipped: int
    rank: int | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class PlanStep:
    """A step of a receipt's plan (`UnitOfWork.promise`): units promised to named lines of one SKU, off its shelf,
    until the step is taken and given (or given back)."""

    cause: str
    step: int
    sku: str
    units: int
    lines: tuple[tuple[str, str, int], ...] | None = None  # (order id, line id, units); None: not read yet


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts at each bucket's upper bound (seconds), the sum and the count."""

    buckets: list[tuple[float, int]]
    total_seconds: float
    count: int


@dataclass(frozen=True)
class StateFigures:
    """The backlog and the business totals as the database holds them now (behind /metrics and the report)."""

    outbox_backlog: int
    outbox_parked: int
    outbox_oldest_age_seconds: float
    open_backorder_lines: int
    open_backorder_units: int
    units_received: int
    units_allocated: int
    units_reserved: int
    units_rejected: int
    cancelled_lines_by_reason: dict[str, int]
    orders_by_outcome: dict[str, int]
    backordered_lines: int
    open_backorder_orders: int
    open_value_minor_by_currency: dict[str, int]
    oldest_open_age_seconds: float
    open_lines_expected_within_7_days: int
    fill_to_allocation: Histogram
    fill_to_shipment: Histogram
    plan_steps_left: int  # deep receipts' steps not given yet: their units promised, off the shelf
    plan_oldest_age_seconds: float  # since the oldest of them was planned


@dataclass(frozen=True)
class SkuBacklog:
    """The open backlog of one SKU in one currency."""

    sku: str
    orders: int
    lines: int
    units: int
    value_minor: int
    currency: str
    oldest_days: int
    available: int
    promised: int  # units of the SKU promised to lines by a receipt's plan, not given yet
    next_restock: dt.date | None
    next_restock_units: int


class StoreUnavailable(Exception):
    """The database cannot be reached or gave up on the transaction; the whole batch is retried later."""


class StoreConflict(StoreUnavailable):
    """The transaction lost a deadlock or serialization conflict with another worker's: retry it at once."""


class StoreRefused(Exception):
    """The database refused what a transaction wrote (a value it cannot hold, a constraint broken): the
    transaction is lost, and some message of its batch is to blame (the batch is split to find it)."""


class Decoder(Protocol):
    def decode(self, value: bytes | None) -> tuple[str, Mapping[str, Any]]:
        """(record full name, record); raises UndecodableMessage or UnknownSchema."""
        ...


class UnitOfWork(Protocol):
    """One database transaction around a batch. Every method runs inside it."""

    def prepare(self, commands: Sequence[Command]) -> None:
        """Lock what the commands name (their orders, then the stock of every SKU they may touch) and load,
        in a few statements, what they will need."""
        ...

    def lock_orders(self, order_ids: Iterable[str]) -> None:
        """Lock these orders until the end of the transaction (in a fixed order)."""
        ...

    def hold_orders(self, order_ids: Iterable[str]) -> None:
        """Wait until no other transaction holds these orders, then hold them until the end of this one.

        Taken after the stock locks, before anything is decided about an order from its other lines: a
        receipt of another SKU may be filling those lines in another worker right now.
        """
        ...

    def hold_free_orders(self, order_ids: Iterable[str]) -> set[str]:
        """Hold, without waiting, those of these orders no other transaction holds, until the end of this one; the
        ones this transaction holds now (those it held already included). The lines of those it holds now are
        read again (those it held already are as this transaction left them)."""
        ...

    def skus_of_orders(self, order_ids: Iterable[str]) -> set[str]:
        """The SKUs of these orders' lines (read before the stock locks are taken)."""
        ...

    def lock_stock(self, skus: Iterable[str]) -> None:
        """Lock the stock rows of these SKUs (in a fixed order, so concurrent workers cannot deadlock)."""
        ...

    def flush(self) -> None:
        """Write what this unit of work has changed so far; the transaction goes on (a read model in the same
        transaction then sees it)."""
        ...

    def caused_by(self, written_at: dt.datetime | None) -> None:
        """When the inbound event being handled entered Kafka: stamped on what it emits (end-to-end latency)."""
        ...

    def savepoint(self) -> AbstractContextManager[None]:
        """Undo one event's writes if it fails (a value the database refuses surfaces when the batch is saved,
        as StoreRefused: the batch is then split to find the message to blame)."""
        ...

    def remember(self, kind: str, natural_key: str, event_id: str, content_hash: bytes) -> Seen:
        """Record an inbound fact by its natural key, or say how it compares with the one recorded."""
        ...

    # ---- products

    def policy(self, sku: str) -> ProductPolicy | None:
        """The SKU's own policy, if the product-policy topic ever sent one."""
        ...

    def set_policy(self, sku: str, policy: ProductPolicy, decided_at: dt.datetime, event_id: str) -> bool:
        """Keep the policy unless a later one (by decided_at) is already kept; True if it was kept."""
        ...

    # ---- orders and lines

    def add_order(self, order: Order, event_id: str, splits: Mapping[str, SplitPreference]) -> None:
        """Record the order with every line waiting (nothing allocated yet); splits by line_id."""
        ...

    def record_outcome(self, order_id: str, outcome: OrderOutcome, backordered_lines: Iterable[str]) -> None:
        """How the order fared when placed, and which of its lines had to wait (for the fill time)."""
        ...

    def order_lines(self, order_ids: Iterable[str]) -> list[OrderLineState]:
        """Every line of these orders, by order and line id."""
        ...

    def customer_waiting(self, customer_id: str, sku: str, other_than_order: str) -> int:
        """Units of the SKU the customer has ordered in other orders and not yet received."""
        ...

    def reject(self, line: OrderLineState, units: int, reason: str) -> None:
        """Refuse `units` of the line (they no longer count as wanted)."""
        ...

    def cancel(self, line: OrderLineState, units: int, code: CancelReason, reason: str, at: dt.datetime) -> None:
        """Cancel `units` of the line that are not on their way; its reserved units go back to stock."""
        ...

    def pending_cancellation(self, order_id: str) -> Cancellation | None:
        """A cancellation that arrived before its order, if any (and forget it)."""
        ...

    def add_pending_cancellation(self, cancellation: Cancellation, event_id: str) -> None: ...

    # ---- stock

    def add_receipt(self, receipt: StockReceipt, event_id: str) -> None:
        """Record the receipt and add its units to the SKU's available stock."""
        ...

    def available(self, sku: str) -> int: ...

    def waiting_lines(self, sku: str) -> Sequence[Backorder]: ...

    def serving(self, sku: str) -> tuple[ServingOrder | None, Sequence[tuple[str, str]]]:
        """The SKU's queue in serving order as last kept (or seeded), and the lines changed since."""
        ...

    def keep_serving(self, sku: str, order: ServingOrder) -> None:
        """Keep the SKU's queue in serving order, as it is now."""
        ...

    def waiting_backorders(self, keys: Iterable[tuple[str, str]]) -> list[Backorder]:
        """Those of the lines that wait, as the queue sees them."""
        ...

    def dated(self, sku: str) -> DatedQueue | None:
        """The SKU's queue as last dated (or seeded), while its lines hold those dates."""
        ...

    def keep_dated(self, sku: str, dated: DatedQueue) -> None:
        """Keep the SKU's queue as dated now: its lines have just been given those dates."""
        ...

    def record_fills(self, fills: Sequence[Fill], shipment_ids: Mapping[str, str], cause: str, at: dt.datetime) -> None:
        """Apply the fills: units leave the SKUs' available stock for the lines; shipment_ids by order_id."""
        ...

    def queue_version(self, sku: str) -> int | None:
        """The SKU's queue version (`Store.queue_versions`) as saved so far, by this unit of work too (`flush`
        first)."""
        ...

    def orders_given(self, cause: str, among: Collection[str] | None = None) -> set[str]:
        """The orders given units under this cause, as saved so far (of `among` only, if given)."""
        ...

    def promise(self, steps: Sequence[PlanStep]) -> None:
        """Keep these steps of a receipt's plan: their units leave the SKU's available stock, promised to their
        lines until each step is taken (`take_step`)."""
        ...

    def plan(self, cause: str) -> list[PlanStep]:
        """The steps of the cause's plan not taken yet, in step order (the SKU is locked); their lines not read."""
        ...

    def step_lines(self, step: PlanStep) -> tuple[tuple[str, str, int], ...]:
        """The lines of a step of a plan, and the units promised to each."""
        ...

    def take_step(self, step: PlanStep) -> None:
        """Take a step of a plan (one `plan` returned): its units are available again, to be given now."""
        ...

    # ---- expected supply, dates, timeline, shipments

    def expect_restock(self, sku: str, restock: ExpectedReceipt, decided_at: dt.datetime, event_id: str) -> bool:
        """Keep this purchase-order line unless a later one (by decided_at) is kept; True if kept."""
        ...

    def consume_restock(self, receipt: StockReceipt) -> None:
        """A receipt naming a purchase order: it no longer needs to come, and its supplier's lateness is noted."""
        ...

    def expected_supply(self, sku: str) -> list[ExpectedReceipt]:
        """The SKU's expected restocks still open, in no order (`Supply.of` puts them in the order they come)."""
        ...

    def supplier_lateness(self, supplier_ids: Iterable[str]) -> dict[str, list[int]]:
        """Days late of each supplier's recent receipts (negative: early)."""
        ...

    def set_expected_dates(self, etas: Mapping[tuple[str, str], Eta]) -> set[str]:
        """Store the lines' expected ship dates; the orders whose dates changed."""
        ...

    def has_expected_dates(self, sku: str) -> bool:
        """Whether any waiting line of the SKU has a known expected ship date."""
        ...

    def eta_told(self, order_ids: Iterable[str]) -> dict[str, dt.date | None]: ...

    def tell_eta(self, order_id: str, date: dt.date | None) -> None: ...

    def all_waiting_lines(self) -> list[OrderLineState]:
        """Every line that waits for units or holds them, for the time-driven sweep."""
        ...

    def unpromised(self, lines: Iterable[OrderLineState]) -> list[OrderLineState]:
        """Those of `lines` that no receipt's plan promises units to (as this transaction leaves the plans)."""
        ...

    def claim_status_update(self, order_id: str, step: int) -> bool:
        """True the first time this step of this order is claimed, ever."""
        ...

    def status_update_claimed(self, order_id: str, step: int) -> bool:
        """Whether this step of this order has been claimed (claiming nothing)."""
        ...

    def lock_sweep(self, wait: bool) -> bool:
        """One sweep at a time across the group, until the end of the transaction; False if busy."""
        ...

    def ship(
        self,
        shipment_id: str,
        order_id: str,
        carrier: str,
        tracking_number: str,
        estimated_delivery: dt.date | None,
        at: dt.datetime,
    ) -> dict[str, int]:
        """Mark the shipment's units shipped; units per line_id (empty for a shipment never requested)."""
        ...

    # ---- out

    def emit(self, events: Sequence[OutboundEvent]) -> None:
        """Add events to the outbox; they are published after the transaction commits."""
        ...

    def dead_letter(self, message: InboundMessage, error: RejectedMessage, at: dt.datetime) -> bool:
        """Send the message to the dead-letter topic through the outbox; False if it was sent before."""
        ...


# ---------------------------------------------------------------------------------------- the store


@dataclass(frozen=True, slots=True)
class Fact:
    """An inbound fact by its natural key: the same key again is a duplicate (same hash) or a conflict."""

    kind: str
    natural_key: str
    event_id: str
    content_hash: bytes


@dataclass(frozen=True)
class KeptPolicy:
    sku: str
    policy: ProductPolicy
    decided_at: dt.datetime
    event_id: str


@dataclass(frozen=True, slots=True)
class KeptRestock:
    sku: str
    restock: ExpectedReceipt
    decided_at: dt.datetime
    event_id: str


@dataclass(frozen=True)
class PendingCancellation:
    cancellation: Cancellation
    event_id: str


@dataclass(frozen=True, slots=True)
class Wanted:
    """What `Store.load` is to read: the keys for each of the loads of those names (none: not made)."""

    policies: Sequence[str] = ()
    restocks: Sequence[str] = ()
    pending_cancellations: Sequence[str] = ()
    queues: Sequence[str] = ()
    skus_with_expected_dates: Sequence[str] = ()

    def __bool__(self) -> bool:
        return any(
            (self.policies, self.restocks, self.pending_cancellations, self.queues, self.skus_with_expected_dates)
        )


@dataclass(frozen=True, slots=True)
class Loaded:
    """What `Store.load` reads at once: each as the Store method of the same name returns it."""

    policies: list[KeptPolicy]
    restocks: list[KeptRestock]
    pending_cancellations: list[PendingCancellation]
    queues: dict[str, Mapping[tuple[str, str], OrderLineState]]
    skus_with_expected_dates: set[str]
    promised: dict[str, frozenset[tuple[str, str]]] = field(default_factory=dict)  # read with the queues


@dataclass(frozen=True, slots=True)
class Delivery:
    """A receipt against a purchase order: how late its supplier was."""

    receipt_id: str
    supplier_id: str
    purchase_order_id: str
    sku: str
    expected_date: dt.date
    received_on: dt.date

    @property
    def days_late(self) -> int:
        return (self.received_on - self.expected_date).days


@dataclass(frozen=True)
class Dispatch:
    shipment_id: str
    order_id: str
    carrier: str
    tracking_number: str
    estimated_delivery: dt.date | None
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class NewOrder:
    order: Order
    event_id: str


@dataclass
class Changes:
    """Everything a unit of work changed, to be saved in a handful of set-based statements. Lines and
    orders are given in their final state; what is `new` is inserted, the rest updated."""

    new_orders: list[NewOrder] = field(default_factory=list)
    outcomes: dict[str, OrderOutcome] = field(default_factory=dict)
    eta_told: dict[str, dt.date | None] = field(default_factory=dict)
    new_lines: list[OrderLineState] = field(default_factory=list)
    changed_lines: list[OrderLineState] = field(default_factory=list)
    lines_before: dict[tuple[str, str], OrderLineState] = field(default_factory=dict)  # the changed, as loaded
    # sku: (available now, units received, units promised: more in plans, or fewer)
    stock: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    receipts: list[tuple[StockReceipt, str]] = field(default_factory=list)
    allocations: list[tuple[Decision, str | None]] = field(default_factory=list)  # with the shipment id
    policies: list[KeptPolicy] = field(default_factory=list)
    restocks: list[KeptRestock] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    pending_added: list[PendingCancellation] = field(default_factory=list)
    pending_applied: list[str] = field(default_factory=list)  # orders whose early cancellations were applied
    status_updates: list[tuple[str, int]] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)
    facts_unclaimed: list[tuple[str, str]] = field(default_factory=list)  # claimed, then rolled back
    events: list[tuple[OutboundEvent, dt.datetime | None]] = field(default_factory=list)  # with the cause's time
    plans_added: list[PlanStep] = field(default_factory=list)
    plans_taken: list[tuple[str, int]] = field(default_factory=list)  # (cause, step) of steps added before

    def __bool__(self) -> bool:
        return any(bool(value) for value in vars(self).values())

    @property
    def queue_skus(self) -> list[str]:
        """The SKUs whose queue this changes: a line of theirs written, their stock, policy or restocks."""
        lines = (*self.new_lines, *self.changed_lines)
        policies = (kept.sku for kept in self.policies)
        restocks = (kept.sku for kept in self.restocks)
        return sorted({line.sku for line in lines}.union(self.stock, policies, restocks))


class Store(Protocol):
    """Where a unit of work loads its state from and saves its changes to: locks, set-based loads, one
    save. No rules here: what a change means is decided in memory (`worker.service.book`)."""

    def lock_orders(self, order_ids: Sequence[str]) -> None:
        """Lock these orders until the end of the transaction (in order_id order)."""
        ...

    def lock_stock(self, skus: Sequence[str]) -> dict[str, int]:
        """Lock the stock rows of these SKUs (in SKU order, creating missing ones); units available of each."""
        ...

    def skus_of_orders(self, order_ids: Sequence[str]) -> set[str]:
        """The SKUs of these orders' lines (read before the stock locks are taken)."""
        ...

    def stock(self, skus: Sequence[str]) -> dict[str, int]:
        """Units available of each SKU (0 for one never seen), without locking anything."""
        ...

    def queue_versions(self, skus: Sequence[str]) -> dict[str, int]:
        """The version of each SKU's queue, a token that changes with every save that changes the SKU
        (`Changes.queue_skus`); a SKU no such save has written yet is left out."""
        ...

    def orders_given(self, cause: str, among: Collection[str] | None = None) -> set[str]:
        """The orders given units under this cause (of `among` only, if given)."""
        ...

    def plan(self, cause: str) -> list[PlanStep]:
        """The steps of the cause's plan not taken yet, in step order; their lines not read."""
        ...

    def promised(self, skus: Sequence[str]) -> dict[str, frozenset[tuple[str, str]]]:
        """The lines of each SKU promised units by a plan (only SKUs with such lines)."""
        ...

    def step_lines(self, cause: str, step: int) -> tuple[tuple[str, str, int], ...]:
        """The lines of a step of the cause's plan, and the units promised to each."""
        ...

    def hold_orders(self, order_ids: Sequence[str]) -> list[OrderLineState]:
        """Wait until no other transaction holds these orders, hold them to the end of this one, and
        return their lines as they are now."""
        ...

    def hold_free_orders(self, order_ids: Sequence[str]) -> tuple[set[str], list[OrderLineState]]:
        """Hold those of these orders no other transaction holds (waiting for none), to the end of this one; the
        ones held and their lines as they are now."""
        ...

    def lock_sweep(self, wait: bool) -> bool: ...

    def claim_facts(self, facts: Sequence[Fact]) -> dict[tuple[str, str], bytes]:
        """Record the facts not seen before; the content hash of each one that was (by kind and key)."""
        ...

    def lines(self, *, orders: Sequence[str] = (), every_waiting: bool = False) -> list[OrderLineState]:
        """The lines of these orders, or every line that waits or holds units."""
        ...

    def queues(self, skus: Sequence[str]) -> dict[str, Mapping[tuple[str, str], OrderLineState]]:
        """The waiting lines of each of these SKUs (none for a SKU where none waits), by (order id, line id)."""
        ...

    def eta_told(self, order_ids: Sequence[str]) -> dict[str, dt.date | None]: ...

    def customer_lines(self, customer_id: str, sku: str) -> list[OrderLineState]:
        """The customer's lines of the SKU that still wait for units (the others add nothing to what waits)."""
        ...

    def skus_with_expected_dates(self, skus: Sequence[str]) -> set[str]:
        """Those of the SKUs with a waiting line whose expected ship date is known."""
        ...

    def load(self, wanted: Wanted) -> Loaded:
        """The loads `wanted` names, at once (one round trip to a database): what a batch's preparation reads
        once its locks are taken."""
        ...

    def policies(self, skus: Sequence[str]) -> list[KeptPolicy]: ...

    def restocks(self, skus: Sequence[str]) -> list[KeptRestock]:
        """Every purchase-order line of these SKUs, done or not."""
        ...

    def deliveries(self, supplier_ids: Sequence[str], last: int) -> list[Delivery]:
        """The `last` deliveries of each supplier."""
        ...

    def pending_cancellations(self, order_ids: Sequence[str]) -> list[PendingCancellation]: ...

    def status_updates(self, order_ids: Sequence[str]) -> set[tuple[str, int]]:
        """The status-update steps already claimed for these orders."""
        ...

    def shipment(self, shipment_id: str, order_id: str) -> dict[str, int]:
        """Units the shipment was requested to carry, per line_id."""
        ...

    def dead_letter(
        self, message: InboundMessage, error: RejectedMessage, at: dt.datetime, caused_at: dt.datetime | None
    ) -> bool:
        """Record the failure and send the message to the dead-letter topic; False if it was sent before."""
        ...

    def save(self, changes: Changes) -> None:
        """Write the changes (set-based); they commit with the transaction."""
        ...


class ReadModel(Protocol):
    """The read side: what operators, reports and metrics look at. It never writes, and it is not the
    unit of work: a read model on a connection of its own sees what is committed; one given with a unit
    of work (a simulation) sees what that transaction has written so far."""

    def waiting_lines(self, sku: str) -> Sequence[Backorder]:
        """The SKU's lines that wait for units, in no particular order."""
        ...

    def policy(self, sku: str) -> ProductPolicy | None:
        """The SKU's own product policy, if it has one."""
        ...

    def promised_lines(self, sku: str) -> Mapping[tuple[str, str], int]:
        """The units receipts' plans promise the SKU's lines, by (order id, line id), which their next steps give
        them: none but while a deep receipt is given in steps. No other event gives such a line units meanwhile."""
        ...

    def decisions(
        self, *, order_id: str | None = None, sku: str | None = None, cause: str | None = None
    ) -> list[Decision]:
        """Allocation decisions, oldest first, filtered by whichever of order, SKU and cause is given."""
        ...

    def state_figures(self) -> StateFigures: ...

    def sku_backlog(self) -> list[SkuBacklog]:
        """The open backlog per SKU (and currency), largest value first."""
        ...

    def cancelled_backorders(self) -> tuple[int, int]:
        """(lines that waited for stock, of them cancelled): the cancel rate."""
        ...


class UnitOfWorkFactory(Protocol):
    def __call__(self) -> AbstractContextManager[UnitOfWork]:
        """A unit of work that commits when the block ends normally and rolls back otherwise."""
        ...


def load_each(store: Store, wanted: Wanted) -> Loaded:
    """`Store.load` as one call of each method, for a store whose calls cost no round trip."""
    w = wanted
    return Loaded(
        store.policies(w.policies) if w.policies else [],
        store.restocks(w.restocks) if w.restocks else [],
        store.pending_cancellations(w.pending_cancellations) if w.pending_cancellations else [],
        store.queues(w.queues) if w.queues else {},
        store.skus_with_expected_dates(w.skus_with_expected_dates) if w.skus_with_expected_dates else set(),
        store.promised(w.queues) if w.queues else {},
    )
