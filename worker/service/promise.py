"""What the shop can promise at checkout, before the order exists.

A promise is the real `place_order` handler run on a snapshot: the cart becomes an order that is placed
in a unit of work over a store that only reads (`Snapshot`), and the answer is read off what the handler
decided. Every rule the worker applies when the order arrives (priority, allocation, refusals, expected
ship dates) is therefore the rule the promise applies; there is no second copy. Nothing is written and
nothing is reserved: another order placed a second later may take the units this one was promised.

A server answering many promises keeps copies of the queues it read (`QueueCopies`): each SKU's waiting
lines and their serving order, as of a version of that queue. Every save that changes a SKU's queue raises
its version in the same transaction, so a copy is used only when the snapshot shows the version it was
taken at: the promise is still made on one consistent snapshot, without reading and ranking a deep queue
again for every cart.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import gc
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from worker.domain.eta import DatedQueue
from worker.domain.model import (
    CustomerTier,
    Order,
    OrderLine,
    OrderLineState,
    ShippingService,
    SplitPreference,
)
from worker.domain.policy import ShopPolicy
from worker.domain.priority import LineKey, ServingOrder
from worker.service.book import Book
from worker.service.commands import PlaceOrder
from worker.service.handlers import order_eta, place_order, serving_order, settle_dates
from worker.service.messages import InboundMessage, RejectedMessage
from worker.service.ports import (
    Changes,
    Delivery,
    Fact,
    KeptPolicy,
    KeptRestock,
    Loaded,
    PendingCancellation,
    PlanStep,
    Store,
    Wanted,
    load_each,
)


@dataclass(frozen=True)
class CartLine:
    line_id: str
    sku: str
    quantity: int
    product_name: str = ""
    unit_price_minor: int = 0


@dataclass(frozen=True)
class Cart:
    customer_id: str
    customer_tier: CustomerTier
    shipping_service: ShippingService
    need_by: dt.date | None
    split_preference: SplitPreference | None
    lines: tuple[CartLine, ...]
    currency: str = "EUR"


@dataclass(frozen=True)
class LinePromise:
    line_id: str
    sku: str
    ships_now: int  # units released to shipping at once
    backordered: int  # units that would wait (reserved for a ship-complete line included)
    accepted: bool  # whether the units that would wait are taken as a backorder
    rejected: int  # units refused
    reason: str | None  # why, when refused (or held)
    expected_ship_date: dt.date | None  # of the line's last unit; None: unknown
    rank: int | None  # the line's place in its SKU's queue (1: served first); None when nothing waits


@dataclass(frozen=True)
class Promise:
    lines: tuple[LinePromise, ...]
    ship_complete_date: dt.date | None  # when the whole order would have shipped; None: unknown
    first_shipment_date: dt.date | None  # when its first units would ship; None: nothing ships yet that is known


def _ship_date(state: OrderLineState, with_the_order: dt.date | None, today: dt.date) -> dt.date | None:
    """When a promised line ships: today what it is allocated, a line held for the rest of its order with the order,
    a waiting line on its own date; never a line that wants nothing (all of it refused)."""
    if not state.wanted:
        return None
    if state.held:
        return with_the_order
    return state.expected_ship_date if state.wanted > state.allocated else today


def promise(
    cart: Cart,
    store: Store,
    shop: ShopPolicy,
    now: dt.datetime,
    *,
    order_id: str | None = None,
    copies: QueueCopies | None = None,
) -> Promise:
    """What placing `cart` now would give, by the worker's own rules on what `store` holds; changes nothing.
    `order_id`: the id the order would have (it breaks ties between orders placed at the same instant).
    `copies`: queues kept from earlier promises, used where `store` shows them unchanged."""
    order_id = order_id or f"promise-{uuid.uuid4()}"
    order = Order(
        order_id=order_id,
        customer_id=cart.customer_id,
        customer_tier=cart.customer_tier,
        shipping_service=cart.shipping_service,
        need_by=cart.need_by,
        split_preference=cart.split_preference,
        currency=cart.currency,
        placed_at=now,
        lines=tuple(
            OrderLine(line.line_id, line.sku, line.product_name or line.sku, line.quantity, line.unit_price_minor)
            for line in cart.lines
        ),
    )
    command = PlaceOrder(event_id=order_id, order=order, content_hash=b"")
    snapshot = Snapshot(store, copies)
    book = Book(snapshot, seeds=snapshot)
    book.prepare([command])
    for sku in sorted({line.sku for line in cart.lines}):  # the queues as the store holds them, for next time
        snapshot.keep_serving(sku, serving_order(book, shop, sku, now))
        settle_dates(book, shop, sku, now)  # as any event of the SKU would
        if (dated := book.dated(sku)) is not None:
            snapshot.keep_dated(sku, dated)
    snapshot.keep()
    place_order(command, book, shop, now)
    today = now.date()
    lines = []
    states = book.order_lines([order_id])
    with_the_order = order_eta(states)  # when a line held for the rest of its order ships
    for state in states:
        waiting = state.wanted - state.allocated
        lines.append(
            LinePromise(
                line_id=state.line_id,
                sku=state.sku,
                ships_now=state.allocated,
                backordered=waiting,
                accepted=state.rejected == 0,
                rejected=state.rejected,
                reason=state.reason if state.rejected or state.reserved else None,
                expected_ship_date=_ship_date(state, with_the_order, today),
                rank=_rank(state, serving_order(book, shop, state.sku, now)) if waiting else None,
            )
        )
    by_id = {line.line_id: line for line in lines}
    ordered = tuple(by_id[line.line_id] for line in cart.lines if line.line_id in by_id)
    return Promise(ordered, _ship_complete(ordered), _first_shipment(ordered, today))


def _rank(line: OrderLineState, served: ServingOrder) -> int | None:
    stands = served.members.get((line.order_id, line.line_id))
    if stands is None:
        return None  # held whole for its order: it no longer takes units from the queue
    return bisect.bisect_left(served.keys, stands) + 1


def _ship_complete(lines: Sequence[LinePromise]) -> dt.date | None:
    dates = [line.expected_ship_date for line in lines if line.ships_now or line.backordered]
    if not dates or any(d is None for d in dates):
        return None
    return max(d for d in dates if d is not None)


def _first_shipment(lines: Sequence[LinePromise], today: dt.date) -> dt.date | None:
    if any(line.ships_now for line in lines):
        return today
    dates = [line.expected_ship_date for line in lines if line.backordered and line.expected_ship_date is not None]
    return min(dates) if dates else None


@dataclass
class _QueueCopy:
    """What a snapshot showed of one SKU at one version of its queue; a field is None until it was read."""

    version: int | None  # None: the SKU has no version yet, and its copy is not kept
    stock: int | None = None
    policy: tuple[KeptPolicy | None] | None = None  # (the policy, or None for none kept)
    restocks: tuple[KeptRestock, ...] | None = None
    lines: Mapping[LineKey, OrderLineState] | None = None  # its waiting lines
    promised: frozenset[LineKey] = frozenset()  # those a deep receipt's plan promises units to (read with them)
    serving: ServingOrder | None = None
    dated: DatedQueue | None = None  # `serving` dated, where `lines` hold those very dates

    @property
    def size(self) -> int:
        """What it counts for against `QueueCopies.max_lines`: one, and one per waiting line."""
        return 1 + (len(self.lines) if self.lines is not None else 0)


class QueueCopies:
    """Copies of SKUs' queues kept across promises (see the module's text), the most recently used first
    kept, up to `max_lines` in all (see `_QueueCopy.size`). Safe to share between threads: a copy is never
    changed once kept; a snapshot works on its own and keeps it when done."""

    # Kept copies are long-lived and hold no reference cycles, but a full collection of the cycle collector
    # walks them all: a pause that grew to 228 ms at 100,000 lines. When copies were taken in, at most once
    # a second, what is alive is moved out of the collector's sight (gc.freeze, which costs no walk);
    # reference counting still frees a copy once it is dropped. What a request in flight holds is frozen
    # too, and would not be reclaimed if it became garbage in a cycle; promises make none (the collector
    # found no cyclic garbage over 9,000 promises, startup aside).
    FREEZE_MIN_INTERVAL_S = 1.0

    def __init__(self, max_lines: int) -> None:
        self.max_lines = max_lines
        self._copies: OrderedDict[str, _QueueCopy] = OrderedDict()
        self._lines = 0
        self._taken_in = 0
        self._frozen_at: float | None = None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, sku: str, version: int | None) -> _QueueCopy:
        """The copy kept of the SKU at `version` (a copy of it, to fill in), or an empty one."""
        with self._lock:
            kept = self._copies.get(sku)
            if kept is None or version is None or kept.version != version:
                self.misses += 1
                return _QueueCopy(version)
            self._copies.move_to_end(sku)
            self.hits += 1
            return dataclasses.replace(kept)

    def put(self, sku: str, copy: _QueueCopy) -> None:
        if copy.version is None:  # the SKU was never written by a worker that raises versions
            return
        with self._lock:
            old = self._copies.pop(sku, None)
            if old is not None:
                self._lines -= old.size
            if old is None or old.version != copy.version or (old.lines is None and copy.lines is not None):
                self._taken_in += copy.size
            if copy.size > self.max_lines:
                return
            self._copies[sku] = copy
            self._lines += copy.size
            while self._lines > self.max_lines:
                _, dropped = self._copies.popitem(last=False)
                self._lines -= dropped.size
            now = time.monotonic()
            if self._taken_in and (self._frozen_at is None or now - self._frozen_at >= self.FREEZE_MIN_INTERVAL_S):
                self._taken_in = 0
                self._frozen_at = now
                gc.freeze()


class Snapshot:
    """A Store that only reads: nothing is locked, claimed or saved. For a promise, in a transaction that
    sees one consistent snapshot (the caller's). With `copies`, what it reads of a SKU (stock, policy,
    expected restocks, waiting lines and their serving order, as `seed`) comes from a copy taken at the
    version of the SKU's queue this snapshot shows, where there is one; `keep` keeps what it read."""

    def __init__(self, store: Store, copies: QueueCopies | None = None) -> None:
        self._store = store
        self._copies = copies
        self._of: dict[str, _QueueCopy] = {}

    def _copy_of(self, skus: Sequence[str]) -> dict[str, _QueueCopy]:
        unknown = [sku for sku in skus if sku not in self._of]
        if unknown:
            copies = self._copies
            if copies is None:  # nothing is kept: what is read lasts this snapshot
                self._of.update((sku, _QueueCopy(None)) for sku in unknown)
            else:
                versions = self._store.queue_versions(unknown)
                self._of.update((sku, copies.get(sku, versions.get(sku))) for sku in unknown)
        return {sku: self._of[sku] for sku in skus}

    def keep(self) -> None:
        """Keep what this snapshot read of each SKU, for the next promises."""
        if self._copies is not None:
            for sku, copy in self._of.items():
                self._copies.put(sku, dataclasses.replace(copy))  # this snapshot may go on filling in its own

    def seed(self, sku: str) -> ServingOrder | None:
        """The serving order of the SKU's queue as this snapshot shows it, if one was kept."""
        copy = self._of.get(sku)
        return copy.serving if copy is not None else None

    def seed_dates(self, sku: str) -> DatedQueue | None:
        """The SKU's queue dated as this snapshot shows it, if that was kept."""
        copy = self._of.get(sku)
        return copy.dated if copy is not None else None

    def keep_serving(self, sku: str, order: ServingOrder) -> None:
        """Note the serving order of the SKU's queue as this snapshot shows it."""
        if sku in self._of:
            self._of[sku].serving = order

    def keep_dated(self, sku: str, dated: DatedQueue) -> None:
        """Note the SKU's queue dated, if its lines as this snapshot shows them hold those dates (the rules
        may give other dates than the stored ones: a day has passed, a supplier's margin changed)."""
        copy = self._of.get(sku)
        if copy is None or copy.lines is None or copy.dated is dated or dated.order is not copy.serving:
            return
        held = copy.lines
        if len(held) == len(dated.etas) and all(
            (stored := held.get((line.order_id, line.line_id))) is not None
            and stored.expected_ship_date == eta.date
            and stored.eta_basis == eta.basis
            for line, eta in zip(dated.order.queue, dated.etas, strict=True)
        ):
            copy.dated = dated

    def stock(self, skus: Sequence[str]) -> dict[str, int]:
        copies = self._copy_of(skus)
        if missing := [sku for sku, copy in copies.items() if copy.stock is None]:
            for sku, units in self._store.stock(missing).items():
                copies[sku].stock = units
        return {sku: copy.stock for sku, copy in copies.items() if copy.stock is not None}

    def load(self, wanted: Wanted) -> Loaded:
        return load_each(self, wanted)

    def policies(self, skus: Sequence[str]) -> list[KeptPolicy]:
        copies = self._copy_of(skus)
        if missing := [sku for sku, copy in copies.items() if copy.policy is None]:
            found = {kept.sku: kept for kept in self._store.policies(missing)}
            for sku in missing:
                copies[sku].policy = (found.get(sku),)
        return [kept for copy in copies.values() if copy.policy is not None and (kept := copy.policy[0]) is not None]

    def restocks(self, skus: Sequence[str]) -> list[KeptRestock]:
        copies = self._copy_of(skus)
        if missing := [sku for sku, copy in copies.items() if copy.restocks is None]:
            found: dict[str, list[KeptRestock]] = {sku: [] for sku in missing}
            for row in self._store.restocks(missing):
                found[row.sku].append(row)
            for sku, rows in found.items():
                copies[sku].restocks = tuple(rows)
        return [row for copy in copies.values() for row in copy.restocks or ()]

    def queues(self, skus: Sequence[str]) -> dict[str, Mapping[LineKey, OrderLineState]]:
        copies = self._copy_of(skus)
        if missing := [sku for sku, copy in copies.items() if copy.lines is None]:
            loaded = self._store.load(Wanted(queues=missing))
            for sku, queue in loaded.queues.items():
                copies[sku].lines = queue
                copies[sku].promised = loaded.promised.get(sku, frozenset())
        return {sku: copy.lines for sku, copy in copies.items() if copy.lines is not None}

    def promised(self, skus: Sequence[str]) -> dict[str, frozenset[tuple[str, str]]]:
        self.queues(skus)  # read with them
        return {sku: copy.promised for sku, copy in self._copy_of(skus).items() if copy.promised}

    def skus_with_expected_dates(self, skus: Sequence[str]) -> set[str]:
        copies = self._copy_of(skus)
        known = {sku for sku, copy in copies.items() if copy.lines is not None}
        dated = {
            sku
            for sku in known
            if any(line.expected_ship_date is not None for line in (copies[sku].lines or {}).values())
        }
        if rest := [sku for sku in skus if sku not in known]:
            dated |= self._store.skus_with_expected_dates(rest)
        return dated

    def lock_orders(self, order_ids: Sequence[str]) -> None:
        pass

    def lock_stock(self, skus: Sequence[str]) -> dict[str, int]:
        return self.stock(skus)

    def skus_of_orders(self, order_ids: Sequence[str]) -> set[str]:
        return self._store.skus_of_orders(order_ids)

    def hold_orders(self, order_ids: Sequence[str]) -> list[OrderLineState]:
        return self._store.lines(orders=order_ids)

    def hold_free_orders(self, order_ids: Sequence[str]) -> tuple[set[str], list[OrderLineState]]:
        return set(order_ids), self._store.lines(orders=order_ids)

    def orders_given(self, cause: str, among: Collection[str] | None = None) -> set[str]:
        return self._store.orders_given(cause, among)

    def plan(self, cause: str) -> list[PlanStep]:
        return self._store.plan(cause)

    def step_lines(self, cause: str, step: int) -> tuple[tuple[str, str, int], ...]:
        return self._store.step_lines(cause, step)

    def lock_sweep(self, wait: bool) -> bool:
        return False

    def claim_facts(self, facts: Sequence[Fact]) -> dict[tuple[str, str], bytes]:
        return {}  # a promise's order is new by construction

    def lines(self, *, orders: Sequence[str] = (), every_waiting: bool = False) -> list[OrderLineState]:
        return self._store.lines(orders=orders, every_waiting=every_waiting)

    def queue_versions(self, skus: Sequence[str]) -> dict[str, int]:
        return self._store.queue_versions(skus)

    def eta_told(self, order_ids: Sequence[str]) -> dict[str, dt.date | None]:
        return self._store.eta_told(order_ids)

    def customer_lines(self, customer_id: str, sku: str) -> list[OrderLineState]:
        return self._store.customer_lines(customer_id, sku)

    def deliveries(self, supplier_ids: Sequence[str], last: int) -> list[Delivery]:
        return self._store.deliveries(supplier_ids, last)

    def pending_cancellations(self, order_ids: Sequence[str]) -> list[PendingCancellation]:
        return []  # no cancellation can name an order that does not exist yet

    def status_updates(self, order_ids: Sequence[str]) -> set[tuple[str, int]]:
        return self._store.status_updates(order_ids)

    def shipment(self, shipment_id: str, order_id: str) -> dict[str, int]:
        return self._store.shipment(shipment_id, order_id)

    def dead_letter(
        self, message: InboundMessage, error: RejectedMessage, at: dt.datetime, caused_at: dt.datetime | None
    ) -> bool:
        raise RuntimeError("a promise writes nothing")

    def save(self, changes: Changes) -> None:
        raise RuntimeError("a promise writes nothing")
