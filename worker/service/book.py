"""The unit of work in memory: the state a batch needs, loaded once, changed by the rules, saved in bulk.

A `Book` is the service layer's UnitOfWork for one transaction. It loads what the batch's commands
need in a few set-returning statements of its `Store` (the stock of their SKUs, locked; the orders they
name; their facts, policies, expected restocks, early cancellations) and whatever else a handler asks
for the first time. Handlers read and change it in memory; every rule of how a line, a stock level or a
purchase order changes lives here and in the domain, never in SQL. When the transaction ends, `save`
hands the store the final state of what changed (new rows to insert, changed rows to update, events
for the outbox), which the store writes set-based.

An event's changes roll back with its savepoint: every change goes through `_put`, which keeps the
value it replaced while a savepoint is open.

Locks keep the state it holds true while the transaction lasts: a line only changes under the stock
lock of its SKU, or under the hold of its order (`hold_orders`, which re-reads the order's lines). The
in-memory fake of the tests is this same class over a store of dicts, so both run the same rules.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Collection, Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from mypy_extensions import mypyc_attr

from worker.domain.allocation import Fill
from worker.domain.eta import DatedQueue, Eta, ExpectedReceipt
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
    merge_cancellations,
)
from worker.domain.policy import ProductPolicy
from worker.domain.priority import ServingOrder
from worker.service.commands import Command, PlaceOrder
from worker.service.messages import InboundMessage, RejectedMessage
from worker.service.ports import (
    Changes,
    Decision,
    Delivery,
    Dispatch,
    Fact,
    KeptPolicy,
    KeptRestock,
    NewOrder,
    PendingCancellation,
    PlanStep,
    Seen,
    Store,
    StoreRefused,
    StoreUnavailable,
    Wanted,
)

LATENESS_HISTORY = 10  # a supplier's margin is learned from its last this-many deliveries

LineKey = tuple[str, str]
_MISSING: Any = object()


class Seeds(Protocol):
    """What a reader kept of SKUs' queues as the store holds them, worked out before (the promise server,
    across transactions that see the same data of those SKUs)."""

    def seed(self, sku: str) -> ServingOrder | None:
        """The SKU's queue in serving order."""

    def seed_dates(self, sku: str) -> DatedQueue | None:
        """The SKU's queue dated, where its lines hold those very dates."""


# Compiled (README, "Compiled rules"), the class stays open to the tests' in-memory repository, which is one.
@mypyc_attr(allow_interpreted_subclasses=True)
class Book:
    """The UnitOfWork of one transaction, in memory over a Store. `seeds`: what was worked out before of the
    SKUs' queues as the store holds them."""

    def __init__(self, store: Store, seeds: Seeds | None = None) -> None:
        self._store = store
        self._seeds = seeds
        self._caused_at: dt.datetime | None = None
        self._undo: list[tuple[MutableMapping[Any, Any], Any, Any]] | None = None
        self._forget()
        self._locked_orders: set[str] = set()
        self._locked_skus: set[str] = set()
        self._held: set[str] = set()
        self._saves = 0  # saves made: once a savepoint has one inside it, it cannot undo in memory what it saved

    def _forget(self) -> None:
        """Drop everything loaded and every change (after a save: the store holds it all)."""
        # Loaded or changed state.
        self._lines: dict[LineKey, OrderLineState] = {}
        self._loaded: dict[LineKey, OrderLineState] = {}  # each line as the store gave it (for the totals)
        self._by_order: dict[str, dict[LineKey, None]] = {}
        self._by_sku: dict[str, dict[LineKey, None]] = {}
        self._backorders: dict[str, tuple[Backorder, ...]] = {}  # a SKU's queue, until a line of it changes
        # A SKU's queue in serving order, and the lines that changed since it was ranked (applied when asked).
        self._serving: dict[str, ServingOrder] = {}
        self._serving_stale: dict[str, dict[LineKey, None]] = {}
        # A SKU's queue dated, while each of its lines holds the date given there.
        self._dated: dict[str, DatedQueue] = {}
        self._orders_loaded: set[str] = set()
        self._queues_loaded: set[str] = set()
        self._available: dict[str, int] = {}
        self._plans: dict[str, dict[int, PlanStep]] = {}  # a cause's plan: its steps not taken, by number
        # A loaded queue's lines that plans promise units to (only SKUs with any): left out of it, their units are
        # on their way.
        self._promised_keys: dict[str, frozenset[LineKey]] = {}
        self._facts: dict[tuple[str, str], tuple[bytes, bool]] = {}  # (hash, claimed by this batch and not used yet)
        self._policies: dict[str, KeptPolicy | None] = {}
        self._restocks: dict[str, dict[str, KeptRestock]] = {}  # sku: purchase order: line
        self._deliveries: dict[str, tuple[Delivery, ...]] = {}
        self._pending: dict[str, tuple[PendingCancellation, ...]] = {}
        self._told: dict[str, dt.date | None] = {}
        self._claimed: dict[tuple[str, int], bool] = {}  # claimed step: by this transaction
        self._claims_read: set[str] = set()  # the orders whose claimed steps were read
        self._with_dates: dict[str, bool] = {}
        # What changed, for the save.
        self._new_orders: dict[str, NewOrder] = {}
        self._outcomes: dict[str, OrderOutcome] = {}
        self._told_changed: dict[str, None] = {}
        self._new_lines: dict[LineKey, None] = {}
        self._changed_lines: dict[LineKey, None] = {}
        self._received: dict[str, int] = {}
        self._stock_changed: dict[str, None] = {}
        self._receipts: dict[int, tuple[StockReceipt, str]] = {}
        self._allocations: dict[int, tuple[Decision, str | None]] = {}
        self._policy_changed: dict[str, None] = {}
        self._restock_changed: dict[tuple[str, str], None] = {}
        self._new_deliveries: dict[int, Delivery] = {}
        self._pending_added: dict[int, PendingCancellation] = {}
        self._pending_applied: dict[str, None] = {}
        self._dispatches: dict[int, Dispatch] = {}
        self._events: dict[int, tuple[OutboundEvent, dt.datetime | None]] = {}
        self._plans_added: dict[tuple[str, int], PlanStep] = {}
        self._plans_taken: dict[tuple[str, int], PlanStep] = {}

    # ------------------------------------------------------------------------- transaction plumbing

    def _put(self, mapping: MutableMapping[Any, Any], key: Any, value: Any) -> None:
        if self._undo is not None:
            self._undo.append((mapping, key, mapping.get(key, _MISSING)))
        mapping[key] = value

    def _pop(self, mapping: MutableMapping[Any, Any], key: Any) -> None:
        if self._undo is not None:
            self._undo.append((mapping, key, mapping.get(key, _MISSING)))
        mapping.pop(key, None)

    def _append(self, mapping: dict[int, Any], value: Any) -> None:
        self._put(mapping, len(mapping), value)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Undo one event's changes if it fails."""
        outer = self._undo is None
        if outer:
            self._undo = []
        assert self._undo is not None
        mark = len(self._undo)
        saves = self._saves
        try:
            yield
        except BaseException as exc:
            if self._saves != saves:
                # Part of the event's work is written: only the end of the transaction can take it back.
                if isinstance(exc, Exception) and not isinstance(exc, StoreUnavailable | StoreRefused):
                    written = f"failed once part of its work was written: {type(exc).__name__}: {exc}"
                    raise StoreRefused(written) from exc
                raise
            undo = self._undo
            while len(undo) > mark:
                mapping, key, old = undo.pop()
                if old is _MISSING:
                    mapping.pop(key, None)
                else:
                    mapping[key] = old
            self._backorders.clear()
            self._serving.clear()
            self._dated.clear()
            raise
        finally:
            if outer:
                self._undo = None

    def caused_by(self, written_at: dt.datetime | None) -> None:
        self._caused_at = written_at

    def changes(self) -> Changes:
        """What this transaction changed, in its final state."""
        new_orders = [self._new_orders[o] for o in self._new_orders]
        changed = [key for key in self._changed_lines if key not in self._new_lines and key in self._lines]
        promised: dict[str, int] = {}  # units a SKU's plans gained, or lost (taken)
        for step in self._plans_added.values():
            promised[step.sku] = promised.get(step.sku, 0) + step.units
        for step in self._plans_taken.values():
            promised[step.sku] = promised.get(step.sku, 0) - step.units
        return Changes(
            new_orders=new_orders,
            outcomes=dict(self._outcomes),
            eta_told={order_id: self._told.get(order_id) for order_id in self._told_changed},
            new_lines=[self._lines[key] for key in self._new_lines if key in self._lines],
            changed_lines=[self._lines[key] for key in changed],
            lines_before={key: self._loaded[key] for key in changed},
            stock={
                sku: (self._available[sku], self._received.get(sku, 0), promised.get(sku, 0))
                for sku in self._stock_changed
            },
            receipts=list(self._receipts.values()),
            allocations=list(self._allocations.values()),
            policies=[p for sku in self._policy_changed if (p := self._policies.get(sku)) is not None],
            restocks=[self._restocks[sku][po] for sku, po in self._restock_changed],
            deliveries=list(self._new_deliveries.values()),
            pending_added=list(self._pending_added.values()),
            pending_applied=list(self._pending_applied),
            status_updates=[claim for claim, ours in self._claimed.items() if ours],
            dispatches=list(self._dispatches.values()),
            facts_unclaimed=[key for key, (_, unused) in self._facts.items() if unused],
            events=list(self._events.values()),
            plans_added=list(self._plans_added.values()),
            plans_taken=list(self._plans_taken),
        )

    def save(self) -> None:
        """Hand every change to the store, and start afresh (what was loaded is loaded again when asked, the
        lines of held orders too: they stay locked). Inside a savepoint, what is saved can no longer be undone
        in memory: should the event fail after it, its transaction fails (`savepoint`)."""
        changes = self.changes()
        if changes:
            self._store.save(changes)
        self._saves += 1
        if self._undo is not None:
            self._undo.clear()  # nothing to undo in memory any more, and nothing of the old state kept by it
        self._held.clear()
        self._forget()

    def flush(self) -> None:
        """`save`, by the name the UnitOfWork port gives it."""
        self.save()

    # ------------------------------------------------------------------------- locks and loading

    def prepare(self, commands: Sequence[Command]) -> None:
        orders = sorted({order_id for command in commands for order_id in command.orders})
        self.lock_orders(orders)  # first the orders, then their SKUs: every batch locks in this order
        # The orders the batch does not place exist already: their SKUs are locked too, then their lines read.
        existing = sorted({o for c in commands if not isinstance(c, PlaceOrder) for o in c.orders})
        skus = {sku for command in commands for sku in command.skus}
        self.lock_stock(sorted(skus | self._store.skus_of_orders(existing)) if existing else sorted(skus))
        self._load_orders(existing)
        facts: dict[tuple[str, str], Fact] = {}
        for command in commands:
            facts.setdefault(command.fact, Fact(*command.fact, command.event_id, command.content_hash))
        self._claim(list(facts.values()))
        locked = sorted(self._locked_skus)
        placed = sorted({c.order.order_id for c in commands if isinstance(c, PlaceOrder)})
        # The queues that will meet units: of the SKUs with units on hand or arriving.
        receiving = {sku for command in commands if not isinstance(command, PlaceOrder) for sku in command.skus}
        queues = _missing(self._queues_loaded, [s for s in locked if self._available.get(s, 0) > 0 or s in receiving])
        # The rest are read at once, in one round trip.
        wanted = Wanted(
            policies=_missing(self._policies, locked),
            restocks=_missing(self._restocks, locked),
            pending_cancellations=_missing(self._pending, placed),
            queues=queues,
            skus_with_expected_dates=_missing(
                self._with_dates, [s for s in locked if s not in self._queues_loaded and s not in queues]
            ),
        )
        if wanted:
            loaded = self._store.load(wanted)
            self._keep_policies(wanted.policies, loaded.policies)
            self._keep_restocks(wanted.restocks, loaded.restocks)
            self._keep_pending(wanted.pending_cancellations, loaded.pending_cancellations)
            self._keep_queues(wanted.queues, loaded.queues, loaded.promised)
            self._keep_with_dates(wanted.skus_with_expected_dates, loaded.skus_with_expected_dates)

    def lock_orders(self, order_ids: Iterable[str]) -> None:
        ordered = _missing(self._locked_orders, order_ids)
        if ordered:
            self._store.lock_orders(ordered)
            self._locked_orders.update(ordered)

    def lock_stock(self, skus: Iterable[str]) -> None:
        ordered = _missing(self._locked_skus, skus)
        if ordered:
            self._available.update(self._store.lock_stock(ordered))
            self._locked_skus.update(ordered)
            self._read_again(set(ordered))

    def _read_again(self, skus: set[str]) -> None:
        """What was read of these SKUs before their locks were taken may have changed since (another worker
        filling a line, taking a policy): forget it, and read the lines again, now that nobody else can
        change them. What this transaction changed itself stays."""
        for sku in skus:
            self._queues_loaded.discard(sku)
            self._with_dates.pop(sku, None)
            self._backorders.pop(sku, None)
            self._serving.pop(sku, None)
            self._dated.pop(sku, None)
            if sku not in self._policy_changed:
                self._policies.pop(sku, None)
            if not any(changed_sku == sku for changed_sku, _ in self._restock_changed):
                self._restocks.pop(sku, None)
        stale = sorted(
            {
                line.order_id
                for key, line in self._lines.items()
                if line.sku in skus and key not in self._changed_lines and key not in self._new_lines
            }
        )
        if stale:
            self._merge(self._store.lines(orders=stale), fresh=True)

    def hold_orders(self, order_ids: Iterable[str]) -> None:
        wanted = self._not_held(order_ids)
        if wanted:
            self._now_held(wanted, self._store.hold_orders(wanted))

    def hold_free_orders(self, order_ids: Iterable[str]) -> set[str]:
        ids = set(order_ids)
        wanted = self._not_held(ids)
        if wanted:
            self._now_held(*self._store.hold_free_orders(wanted))
        return {o for o in ids if o in self._held or o in self._new_orders}

    def _not_held(self, order_ids: Iterable[str]) -> list[str]:
        """Of these orders, those to hold: orders placed by this transaction exist nowhere else yet."""
        return sorted({o for o in order_ids if o not in self._held and o not in self._new_orders})

    def _now_held(self, order_ids: Iterable[str], lines: list[OrderLineState]) -> None:
        """The orders this transaction holds from now on, and their lines read again under the hold."""
        self._held.update(order_ids)
        self._merge(lines, fresh=True)
        self._orders_loaded.update(order_ids)

    def skus_of_orders(self, order_ids: Iterable[str]) -> set[str]:
        ids = set(order_ids)
        self._load_orders(ids)
        return {self._lines[k].sku for o in ids for k in self._by_order.get(o, ())}

    def lock_sweep(self, wait: bool) -> bool:
        return self._store.lock_sweep(wait)

    def _merge(self, lines: Iterable[OrderLineState], *, fresh: bool = False, of_orders: bool = True) -> None:
        """Add loaded lines. What this transaction changed stays as it is; so does what it loaded before,
        unless `fresh` (read under the order's hold: another transaction may have changed it since).
        `of_orders`: every line of the orders they belong to, which are indexed by order (a queue's lines
        are not: their orders' other lines are read when an order is asked for)."""
        known, loaded, by_order, by_sku = self._lines, self._loaded, self._by_order, self._by_sku
        ranked = self._serving
        for line in lines:  # a few hundred thousand lines a second: locals, and one lookup per index
            key = (line.order_id, line.line_id)
            before = known.get(key)
            if before is not None:
                if not fresh or key in self._changed_lines or key in self._new_lines:
                    if of_orders:
                        by_order.setdefault(line.order_id, {})[key] = None
                    continue
                self._queue_changed(before, line)
                if before.expected_ship_date != line.expected_ship_date or before.eta_basis != line.eta_basis:
                    self._dated.pop(line.sku, None)
            elif line.sku in ranked or line.sku in self._backorders:
                self._queue_changed(None, line)
            known[key] = loaded[key] = line
            if of_orders:
                order = by_order.get(line.order_id)
                if order is None:
                    order = by_order[line.order_id] = {}
                order[key] = None
            queue = by_sku.get(line.sku)
            if queue is None:
                queue = by_sku[line.sku] = {}
            queue[key] = None

    def _load_orders(self, order_ids: Iterable[str]) -> None:
        missing = _missing(self._orders_loaded, order_ids)
        if missing:
            self._merge(self._store.lines(orders=missing))
            self._orders_loaded.update(missing)

    def _load_queues(self, skus: Iterable[str]) -> None:
        if missing := _missing(self._queues_loaded, skus):
            loaded = self._store.load(Wanted(queues=missing))
            self._keep_queues(missing, loaded.queues, loaded.promised)

    def _keep_queues(
        self,
        skus: Sequence[str],
        queues: Mapping[str, Mapping[LineKey, OrderLineState]],
        promised: Mapping[str, frozenset[LineKey]],
    ) -> None:
        for sku in skus:
            if keys := promised.get(sku):
                self._promised_keys[sku] = keys
            else:
                self._promised_keys.pop(sku, None)
        for sku, queue in queues.items():
            if sku in self._serving or sku in self._backorders or not self._lines.keys().isdisjoint(queue.keys()):
                self._merge(queue.values(), of_orders=False)
            else:  # nothing of it known or worked out yet: indexed whole (a promise reads deep queues)
                self._lines.update(queue)
                self._loaded.update(queue)
                self._by_sku.setdefault(sku, {}).update(dict.fromkeys(queue))
        self._queues_loaded.update(skus)

    def _claim(self, facts: Sequence[Fact]) -> None:
        facts = [f for f in facts if (f.kind, f.natural_key) not in self._facts]
        if not facts:
            return
        seen = self._store.claim_facts(facts)
        for fact in facts:
            key = (fact.kind, fact.natural_key)
            self._facts[key] = (seen[key], False) if key in seen else (fact.content_hash, True)

    def _load_policies(self, skus: Iterable[str]) -> None:
        if missing := _missing(self._policies, skus):
            self._keep_policies(missing, self._store.policies(missing))

    def _keep_policies(self, skus: Sequence[str], rows: Sequence[KeptPolicy]) -> None:
        kept = {p.sku: p for p in rows}
        self._policies.update({sku: kept.get(sku) for sku in skus})

    def _load_restocks(self, skus: Iterable[str]) -> None:
        if missing := _missing(self._restocks, skus):
            self._keep_restocks(missing, self._store.restocks(missing))

    def _keep_restocks(self, skus: Sequence[str], rows: Sequence[KeptRestock]) -> None:
        loaded: dict[str, dict[str, KeptRestock]] = {sku: {} for sku in skus}
        for row in rows:
            loaded[row.sku][row.restock.purchase_order_id] = row
        self._restocks.update(loaded)

    def _load_with_dates(self, skus: Iterable[str]) -> None:
        if missing := _missing(self._with_dates, skus):
            self._keep_with_dates(missing, self._store.skus_with_expected_dates(missing))

    def _keep_with_dates(self, skus: Sequence[str], known: set[str]) -> None:
        self._with_dates.update({sku: sku in known for sku in skus})

    def _load_pending(self, order_ids: Iterable[str]) -> None:
        if missing := _missing(self._pending, order_ids):
            self._keep_pending(missing, self._store.pending_cancellations(missing))

    def _keep_pending(self, order_ids: Sequence[str], rows: Sequence[PendingCancellation]) -> None:
        found: dict[str, list[PendingCancellation]] = {o: [] for o in order_ids}
        for row in rows:
            found[row.cancellation.order_id].append(row)
        self._pending.update({o: tuple(kept) for o, kept in found.items()})

    def _load_told(self, order_ids: Iterable[str]) -> None:
        missing = _missing(self._told, order_ids)
        if missing:
            told = self._store.eta_told(missing)
            self._told.update({o: told.get(o) for o in missing})

    # ------------------------------------------------------------------------- facts and policies

    def remember(self, kind: str, natural_key: str, event_id: str, content_hash: bytes) -> Seen:
        key = (kind, natural_key)
        self._claim([Fact(kind, natural_key, event_id, content_hash)])
        known, unused = self._facts[key]
        if unused and known == content_hash:
            self._put(self._facts, key, (known, False))
            return Seen.NEW
        return Seen.SAME if known == content_hash else Seen.DIFFERENT

    def policy(self, sku: str) -> ProductPolicy | None:
        if sku not in self._policies:
            self._load_policies([sku])
        kept = self._policies[sku]
        return kept.policy if kept is not None else None

    def set_policy(self, sku: str, policy: ProductPolicy, decided_at: dt.datetime, event_id: str) -> bool:
        if sku not in self._policies:
            self._load_policies([sku])
        kept = self._policies[sku]
        # The topic is compacted and may be replayed: a policy older than the one kept changes nothing.
        if kept is not None and (kept.decided_at, kept.event_id) >= (decided_at, event_id):
            return False
        self._put(self._policies, sku, KeptPolicy(sku, policy, decided_at, event_id))
        self._put(self._policy_changed, sku, None)
        self._serving.pop(sku, None)  # a pre-order's wait counts from its product's release
        self._dated.pop(sku, None)  # so do its dates
        return True

    # ------------------------------------------------------------------------- orders and lines

    def add_order(self, order: Order, event_id: str, splits: Mapping[str, SplitPreference]) -> None:
        units = sum(line.quantity for line in order.lines)
        self._put(self._new_orders, order.order_id, NewOrder(order, event_id))
        self._orders_loaded.add(order.order_id)
        self._told.setdefault(order.order_id, None)
        for line in order.lines:
            self._change(
                OrderLineState(
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
                ),
                new=True,
            )

    def _change(self, line: OrderLineState, *, new: bool = False) -> None:
        key = (line.order_id, line.line_id)
        self._queue_changed(self._lines.get(key), line)
        self._put(self._lines, key, line)
        self._put(self._new_lines if new else self._changed_lines, key, None)
        self._by_order.setdefault(line.order_id, {})[key] = None  # an index only grows: readers check _lines
        self._by_sku.setdefault(line.sku, {})[key] = None

    def record_outcome(self, order_id: str, outcome: OrderOutcome, backordered_lines: Iterable[str]) -> None:
        self._put(self._outcomes, order_id, outcome)
        for line_id in backordered_lines:
            line = self._lines[(order_id, line_id)]
            self._change(line.marked_backordered())

    def _lines_of(self, order_id: str) -> list[OrderLineState]:
        found = (self._lines.get(key) for key in self._by_order.get(order_id, ()))
        return sorted((line for line in found if line is not None), key=lambda line: line.line_id)

    def order_lines(self, order_ids: Iterable[str]) -> list[OrderLineState]:
        ids = sorted(set(order_ids))
        self._load_orders(ids)
        return [line for order_id in ids for line in self._lines_of(order_id)]

    def customer_waiting(self, customer_id: str, sku: str, other_than_order: str) -> int:
        lines = {(line.order_id, line.line_id): line for line in self._store.customer_lines(customer_id, sku)}
        for key in self._by_sku.get(sku, ()):  # what this transaction knows is newer
            line = self._lines.get(key)
            if line is not None and line.customer_id == customer_id:
                lines[key] = line
        return sum(line.wanted - line.allocated for line in lines.values() if line.order_id != other_than_order)

    def reject(self, line: OrderLineState, units: int, reason: str) -> None:
        self._change(
            dataclasses.replace(
                line, rejected=line.rejected + units, status=line.status_after_rejecting(units), reason=reason
            )
        )

    def cancel(self, line: OrderLineState, units: int, code: CancelReason, reason: str, at: dt.datetime) -> None:
        self._change(line.after_cancelling(units, code, reason))
        if line.reserved:
            self._add_available(line.sku, line.reserved)

    def pending_cancellation(self, order_id: str) -> Cancellation | None:
        if order_id not in self._pending:
            self._load_pending([order_id])
        rows = self._pending[order_id]
        if not rows:
            return None
        self._put(self._pending, order_id, ())
        self._put(self._pending_applied, order_id, None)
        # in the order of their event ids before they are merged in order of time: of the same moment, the reason
        # kept is the same whatever order the store read them in (PostgreSQL's is none in particular)
        return merge_cancellations([row.cancellation for row in sorted(rows, key=lambda row: row.event_id)])

    def add_pending_cancellation(self, cancellation: Cancellation, event_id: str) -> None:
        self._load_pending([cancellation.order_id])
        row = PendingCancellation(cancellation, event_id)
        self._put(self._pending, cancellation.order_id, (*self._pending[cancellation.order_id], row))
        self._append(self._pending_added, row)

    # ------------------------------------------------------------------------- stock

    def add_receipt(self, receipt: StockReceipt, event_id: str) -> None:
        self._append(self._receipts, (receipt, event_id))
        self._put(self._received, receipt.sku, self._received.get(receipt.sku, 0) + receipt.quantity)
        self._add_available(receipt.sku, receipt.quantity)

    def queue_version(self, sku: str) -> int | None:
        return self._store.queue_versions([sku]).get(sku)

    def orders_given(self, cause: str, among: Collection[str] | None = None) -> set[str]:
        return self._store.orders_given(cause, among)

    def promise(self, steps: Sequence[PlanStep]) -> None:
        for step in steps:
            self._add_available(step.sku, -step.units)
            plan = dict(self._plan_steps(step.cause))
            plan[step.step] = step
            self._put(self._plans, step.cause, plan)
            self._put(self._plans_added, (step.cause, step.step), step)
            self._promised_changed(step.sku)

    def plan(self, cause: str) -> list[PlanStep]:
        return [step for _, step in sorted(self._plan_steps(cause).items())]

    def _plan_steps(self, cause: str) -> Mapping[int, PlanStep]:
        if cause not in self._plans:
            self._plans[cause] = {step.step: step for step in self._store.plan(cause)}
        return self._plans[cause]

    def step_lines(self, step: PlanStep) -> tuple[tuple[str, str, int], ...]:
        if step.lines is not None:
            return step.lines
        added = self._plans_added.get((step.cause, step.step))
        if added is not None and added.lines is not None:
            return added.lines
        return self._store.step_lines(step.cause, step.step)

    def take_step(self, step: PlanStep) -> None:
        plan = dict(self._plan_steps(step.cause))
        if plan.pop(step.step, None) is None:
            raise RuntimeError(f"step {step.step} of {step.cause} is not in its plan")
        self._put(self._plans, step.cause, plan)
        key = (step.cause, step.step)
        if key in self._plans_added:  # promised by this transaction: never written
            self._pop(self._plans_added, key)
        else:
            self._put(self._plans_taken, key, step)
        self._add_available(step.sku, step.units)
        self._promised_changed(step.sku)

    def _promised_changed(self, sku: str) -> None:
        """Lines of the SKU promised units, or no longer: its queue, if it was loaded, is read again when next asked
        for. (Kept up to date here instead, the sets of a 100,000-line plan's keys, each step's kept by the open
        savepoint for its undo, took the worker's peak from 193 to 235 MB.)"""
        self._promised_keys.pop(sku, None)
        if sku in self._queues_loaded:
            self._queues_loaded.discard(sku)
            self._backorders.pop(sku, None)
            self._serving.pop(sku, None)
            self._dated.pop(sku, None)

    def available(self, sku: str) -> int:
        self._require_locked(sku)
        return self._available[sku]

    def _add_available(self, sku: str, delta: int) -> None:
        self._require_locked(sku)
        units = self._available[sku] + delta
        if units < 0:
            raise ValueError(f"stock of {sku!r} would go below zero ({units})")
        self._put(self._available, sku, units)
        self._put(self._stock_changed, sku, None)

    def _require_locked(self, sku: str) -> None:
        if sku not in self._locked_skus:
            raise RuntimeError(f"stock of {sku!r} was not locked at the start of the batch")
        if sku not in self._available:  # locked, then forgotten by a save: read it again
            self._available.update(self._store.lock_stock([sku]))

    def _queue_changed(self, before: OrderLineState | None, after: OrderLineState) -> None:
        """Forget what was worked out of the line's queue, unless the line waits in it exactly as before."""
        sku = after.sku
        ranked = sku in self._serving
        if not ranked and sku not in self._backorders:
            return  # nothing worked out yet: no comparison on the way of every change
        if before is not None and before.queues_as(after):
            return
        self._backorders.pop(sku, None)
        if ranked:
            self._serving_stale.setdefault(sku, {})[(after.order_id, after.line_id)] = None

    def serving(self, sku: str) -> tuple[ServingOrder | None, Sequence[LineKey]]:
        kept = self._serving.get(sku)
        if kept is None and self._seeds is not None and sku not in self._policy_changed:
            if sku not in self._queues_loaded:
                self._load_queues([sku])
            kept = self._seeds.seed(sku)
            if kept is not None:  # the store's queue: what this transaction changed of it applies on top
                self._serving[sku] = kept
                stale = self._serving_stale[sku] = {
                    key: None
                    for key in itertools.chain(self._new_lines, self._changed_lines)
                    if (line := self._lines.get(key)) is not None and line.sku == sku
                }
                if not stale and (dated := self._seeds.seed_dates(sku)) is not None and dated.order is kept:
                    self._dated[sku] = dated
        return kept, tuple(self._serving_stale.get(sku, ())) if kept is not None else ()

    def keep_serving(self, sku: str, order: ServingOrder) -> None:
        self._serving[sku] = order
        self._serving_stale[sku] = {}

    def dated(self, sku: str) -> DatedQueue | None:
        return self._dated.get(sku)

    def keep_dated(self, sku: str, dated: DatedQueue) -> None:
        self._dated[sku] = dated

    def waiting_backorders(self, keys: Iterable[LineKey]) -> list[Backorder]:
        found = ((key, self._lines.get(key)) for key in keys)
        promised = self._promised_keys  # empty but while a deep receipt is given in steps
        return [
            line.as_backorder()
            for key, line in found
            if line is not None and line.status in WAITING and not (promised and key in promised.get(line.sku, ()))
        ]

    def waiting_lines(self, sku: str) -> Sequence[Backorder]:
        queue = self._backorders.get(sku)
        if queue is None:
            queue = self._backorders[sku] = tuple(line.as_backorder() for line in self._queue(sku))
        return queue

    def _queue(self, sku: str) -> list[OrderLineState]:
        if sku not in self._queues_loaded:
            self._load_queues([sku])
        found = (self._lines.get(key) for key in self._by_sku.get(sku, ()))
        queue = [line for line in found if line is not None and line.sku == sku and line.status in WAITING]
        if promised := self._promised_keys.get(sku):  # rare: the loop above is on the way of every order
            queue = [line for line in queue if (line.order_id, line.line_id) not in promised]
        return queue

    def record_fills(self, fills: Sequence[Fill], shipment_ids: Mapping[str, str], cause: str, at: dt.datetime) -> None:
        taken: dict[str, int] = {}
        for fill in fills:
            b = fill.backorder
            line = self._lines[(b.order_id, b.line_id)]
            self._change(line.after_fill(fill, at))
            shipment = shipment_ids[b.order_id] if fill.ships_now else None
            decision = Decision(
                at,
                cause,
                b.order_id,
                b.line_id,
                b.sku,
                fill.quantity,
                max(0, fill.quantity - fill.ships_now),
                fill.ships_now,
                fill.priority.rank,
                fill.priority.reason,
            )
            self._append(self._allocations, (decision, shipment))
            taken[b.sku] = taken.get(b.sku, 0) + fill.quantity
        for sku, units in sorted(taken.items()):
            if units:
                self._add_available(sku, -units)

    # ------------------------------------------------------------------------- expected supply and dates

    def expect_restock(self, sku: str, restock: ExpectedReceipt, decided_at: dt.datetime, event_id: str) -> bool:
        if sku not in self._restocks:
            self._load_restocks([sku])
        kept = self._restocks[sku].get(restock.purchase_order_id)
        if kept is not None and (kept.decided_at, kept.event_id) >= (decided_at, event_id):
            return False
        self._set_restock(KeptRestock(sku, restock, decided_at, event_id))
        return True

    def _set_restock(self, row: KeptRestock) -> None:
        lines = dict(self._restocks[row.sku])
        lines[row.restock.purchase_order_id] = row
        self._put(self._restocks, row.sku, lines)
        self._put(self._restock_changed, (row.sku, row.restock.purchase_order_id), None)

    def consume_restock(self, receipt: StockReceipt) -> None:
        assert receipt.purchase_order_id is not None
        self._load_restocks([receipt.sku])
        kept = self._restocks[receipt.sku].get(receipt.purchase_order_id)
        if kept is None:
            return  # a purchase order the worker was never told about: nothing to learn
        left = max(0, kept.restock.quantity - receipt.quantity)
        self._set_restock(dataclasses.replace(kept, restock=dataclasses.replace(kept.restock, quantity=left)))
        supplier = kept.restock.supplier_id
        delivery = Delivery(
            receipt.receipt_id,
            supplier,
            receipt.purchase_order_id,
            receipt.sku,
            kept.restock.expected_date,
            receipt.received_at.date(),
        )
        self._load_deliveries([supplier])
        if any(d.receipt_id == receipt.receipt_id for d in self._deliveries[supplier]):
            return
        self._put(self._deliveries, supplier, (*self._deliveries[supplier], delivery))
        self._append(self._new_deliveries, delivery)

    def expected_supply(self, sku: str) -> list[ExpectedReceipt]:
        if sku not in self._restocks:
            self._load_restocks([sku])
        return [row.restock for row in self._restocks[sku].values() if row.restock.quantity > 0]

    def _load_deliveries(self, supplier_ids: Iterable[str]) -> None:
        missing = _missing(self._deliveries, supplier_ids)
        if missing:
            found: dict[str, list[Delivery]] = {s: [] for s in missing}
            for delivery in self._store.deliveries(missing, LATENESS_HISTORY):
                found[delivery.supplier_id].append(delivery)
            self._deliveries.update({s: tuple(rows) for s, rows in found.items()})

    def supplier_lateness(self, supplier_ids: Iterable[str]) -> dict[str, list[int]]:
        ids = set(supplier_ids)
        self._load_deliveries(ids)
        out: dict[str, list[int]] = {}
        for supplier in sorted(ids):
            recent = sorted(self._deliveries[supplier], key=lambda d: (-d.received_on.toordinal(), d.receipt_id))
            if recent:
                out[supplier] = [d.days_late for d in recent[:LATENESS_HISTORY]]
        return out

    def set_expected_dates(self, etas: Mapping[tuple[str, str], Eta]) -> set[str]:
        changed: set[str] = set()
        for key, eta in etas.items():
            line = self._lines[key]
            if line.expected_ship_date == eta.date and line.eta_basis == eta.basis:
                continue
            if line.expected_ship_date != eta.date:
                changed.add(line.order_id)
            self._change(line.with_eta(eta.date, eta.basis))
        return changed

    def has_expected_dates(self, sku: str) -> bool:
        if sku in self._queues_loaded:
            return any(line.expected_ship_date is not None for line in self._queue(sku))
        if sku not in self._with_dates:
            self._load_with_dates([sku])
        return self._with_dates[sku]

    def eta_told(self, order_ids: Iterable[str]) -> dict[str, dt.date | None]:
        ids = set(order_ids)
        self._load_told(ids)
        return {order_id: self._told[order_id] for order_id in ids}

    def tell_eta(self, order_id: str, date: dt.date | None) -> None:
        if order_id not in self._told:
            self._load_told([order_id])
        self._put(self._told, order_id, date)
        self._put(self._told_changed, order_id, None)

    # ------------------------------------------------------------------------- the sweep and shipments

    def all_waiting_lines(self) -> list[OrderLineState]:
        self._merge(self._store.lines(every_waiting=True))
        waiting = (line for line in self._lines.values() if line.waiting)
        return sorted(waiting, key=lambda line: (line.order_id, line.line_id))

    def unpromised(self, lines: Iterable[OrderLineState]) -> list[OrderLineState]:
        lines = list(lines)
        promised = {key for keys in self._store.promised(sorted({line.sku for line in lines})).values() for key in keys}
        for step in self._plans_taken.values():  # taken here: in the store until this transaction saves
            promised.difference_update((order_id, line_id) for order_id, line_id, _ in self.step_lines(step))
        for step in self._plans_added.values():  # promised here: not in the store yet
            promised.update((order_id, line_id) for order_id, line_id, _ in step.lines or ())
        return [line for line in lines if (line.order_id, line.line_id) not in promised]

    def claim_status_update(self, order_id: str, step: int) -> bool:
        if self.status_update_claimed(order_id, step):
            return False
        self._put(self._claimed, (order_id, step), True)
        return True

    def status_update_claimed(self, order_id: str, step: int) -> bool:
        if order_id not in self._claims_read:
            self._claims_read.add(order_id)
            self._claimed.update(dict.fromkeys(self._store.status_updates([order_id]), False))
        return (order_id, step) in self._claimed

    def ship(
        self,
        shipment_id: str,
        order_id: str,
        carrier: str,
        tracking_number: str,
        estimated_delivery: dt.date | None,
        at: dt.datetime,
    ) -> dict[str, int]:
        units = self._store.shipment(shipment_id, order_id)
        for decision, shipment in self._allocations.values():  # requested by this same transaction
            if shipment == shipment_id and decision.order_id == order_id and decision.shipped:
                units[decision.line_id] = units.get(decision.line_id, 0) + decision.shipped
        if not units:
            return {}
        self._append(
            self._dispatches, Dispatch(shipment_id, order_id, carrier, tracking_number, estimated_delivery, at)
        )
        self._load_orders([order_id])
        for line_id, shipped in sorted(units.items()):
            line = self._lines.get((order_id, line_id))
            if line is not None:
                self._change(line.after_shipping(shipped, at))
        return units

    # ------------------------------------------------------------------------- out

    def emit(self, events: Sequence[OutboundEvent]) -> None:
        for event in events:
            self._append(self._events, (event, self._caused_at))

    def dead_letter(self, message: InboundMessage, error: RejectedMessage, at: dt.datetime) -> bool:
        return self._store.dead_letter(message, error, at, self._caused_at)


def _missing(known: Collection[str], keys: Iterable[str]) -> list[str]:
    """The keys not in `known`, sorted and once each: what is still to be read."""
    return sorted({key for key in keys if key not in known})
