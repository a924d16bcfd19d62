"""Handlers: one function per command, each working through a unit of work and emitting events.

A handler either applies its command completely or, for a fact it has seen before, does nothing
(`Outcome.DUPLICATE`). Every event it emits gets an id derived from the command's natural key, so
the same fact handled twice can never produce two different events. Events describe the lines'
state after the command, read back from the unit of work, so they always agree with the database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from enum import StrEnum
from itertools import chain, groupby

import structlog

from worker.domain.allocation import Fill, allocate
from worker.domain.eta import (
    DatedQueue,
    Eta,
    Supply,
    UnreliableSupplier,
    date_queue,
    is_news,
    is_unreliable,
    reliability,
    supplier_margin,
)
from worker.domain.events import (
    BackorderStatusChanged,
    CustomerNotification,
    FulfillmentLine,
    FulfillmentRequested,
    NotificationLine,
    NotificationType,
    OutboundEvent,
    event_id,
)
from worker.domain.model import (
    WAITING,
    Backorder,
    Cancellation,
    CancelReason,
    LineStatus,
    OrderLineState,
    OrderOutcome,
    PaymentTiming,
    SplitPreference,
)
from worker.domain.policy import (
    Outlook,
    ProductPolicy,
    ShipCompleteScope,
    ShopPolicy,
    Verdict,
    held_until,
    is_preorder,
    judge_shortfall,
    promise_limit,
    waits_from,
)
from worker.domain.priority import LineKey, ServingOrder, priority, rank
from worker.service.commands import (
    CancelOrder,
    Command,
    DispatchShipment,
    ExpectRestock,
    PlaceOrder,
    ReceiveStock,
    SetProductPolicy,
)
from worker.service.messages import ConflictingDuplicate, InvalidEvent
from worker.service.ports import PlanStep, Seen, StoreUnavailable, UnitOfWork, UnitOfWorkFactory

log = structlog.get_logger(__name__)


class Outcome(StrEnum):
    PROCESSED = "processed"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"


def handle(
    command: Command, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime, *, fills_per_step: int | None = None
) -> Outcome | FillsLeft:
    """Apply the command in `uow`: its outcome, or for a receipt with more fills than one step gives
    (`fills_per_step`, FILLS_PER_SAVE by default), what is left to give (`give_more`) once `uow` is committed."""
    if isinstance(command, PlaceOrder):
        return place_order(command, uow, shop, now)
    if isinstance(command, ReceiveStock):
        return receive_stock(command, uow, shop, now, fills_per_step=fills_per_step)
    if isinstance(command, CancelOrder):
        return cancel_order(command, uow, shop, now)
    if isinstance(command, ExpectRestock):
        return expect_restock(command, uow, shop, now)
    if isinstance(command, DispatchShipment):
        return dispatch_shipment(command, uow, shop, now)
    return set_product_policy(command, uow, shop, now)


# ------------------------------------------------------------------------------------------ commands


def place_order(command: PlaceOrder, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime) -> Outcome:
    order = command.order
    if not _first_time(uow, command):
        return Outcome.DUPLICATE
    skus = sorted(command.skus)
    policies = {sku: _policy(uow, shop, sku) for sku in skus}
    splits = {line.line_id: order.split_preference or policies[line.sku].default_split for line in order.lines}
    uow.add_order(order, command.event_id, splits)
    cause = f"order-created/{order.order_id}"
    events: list[OutboundEvent] = []

    pending = uow.pending_cancellation(order.order_id)
    if pending is not None:  # the cancellation came first: apply it before anything is allocated
        events += _cancel(uow, pending, cause, shop, now)

    rejected: dict[str, Verdict] = {}
    for sku in skus:
        rejected |= _judge_shortfalls(uow, command, sku, policies[sku], shop, now)
    fills = _allocate(uow, skus, cause, shop, now)
    eta_news = _refresh_etas(uow, skus, cause, shop, now, quiet={order.order_id})

    own = [f for f in fills if f.backorder.order_id == order.order_id]
    others = [f for f in fills if f.backorder.order_id != order.order_id]
    states = _by_order(uow.order_lines({order.order_id} | {f.backorder.order_id for f in fills}))
    lines = states[order.order_id]
    if any(line.status is not LineStatus.CANCELLED for line in lines):  # not cancelled before it arrived
        uow.record_outcome(order.order_id, OrderOutcome.of(lines), [line.line_id for line in lines if line.waiting])
    if any(f.ships_now for f in own):
        events.append(_fulfillment(cause, command.event_id, lines, own, uow, shop, now))
    # A product not released yet ships nothing before its release: its lines wait for that day.
    held = {sku: release for sku in skus if (release := held_until(policies[sku], now)) is not None}
    events += [
        _status(cause, line, now, reason=_held_reason(held[line.sku]) if line.sku in held and line.waiting else None)
        for line in lines
        if line.status is not LineStatus.CANCELLED
    ]
    waiting = [line for line in lines if line.waiting]
    if waiting:
        expected = order_eta(waiting)
        releases = sorted({held[line.sku] for line in waiting if line.sku in held})
        if releases:
            why: str | None = "; ".join(_held_reason(release) for release in releases)
        else:
            why = None if expected else "expected ship date unknown: no restock is scheduled yet"
        uow.tell_eta(order.order_id, expected)
        log.debug(
            "backordered",
            order_id=order.order_id,
            lines=len(waiting),
            units=sum(line.wanted - line.allocated for line in waiting),
            expected_ship_date=str(expected),
        )
        events.append(
            _notification(
                cause,
                NotificationType.BACKORDER_CONFIRMED,
                lines[0],
                _waiting_lines(waiting),
                cancel_allowed=True,
                now=now,
                expected_ship_date=expected,
                reason=why,
            )
        )
    if rejected:
        events.append(
            _notification(
                cause,
                NotificationType.BACKORDER_REJECTED,
                lines[0],
                [
                    NotificationLine(
                        line.line_id, line.sku, line.product_name, rejected[line.line_id].rejected, LineStatus.REJECTED
                    )
                    for line in lines
                    if line.line_id in rejected
                ],
                cancel_allowed=bool(waiting),
                now=now,
                reason="; ".join(sorted({v.reason for v in rejected.values() if v.reason})),
            )
        )
    # Units on hand go to older or higher-ranked waiting lines first; normally there are none.
    events += _announce_fills(cause, command.event_id, others, states, uow, shop, now)
    uow.emit(events + eta_news)
    return Outcome.PROCESSED


# A receipt that fills more lines than this gives them in steps of about this many (`_steps`), each step in a
# transaction of its own (the consumer's steps are `BACKORDER_TRANSACTION_MAX_LINES`, whose default this is): no
# transaction holds the SKU's lock and its orders' for long whatever the queue's depth, the first lines'
# customers hear at once, and the relay publishes a step's events while the next is worked out. What the worker
# holds at once is the queue as decided, not also every line it changed, every decision and every event (a
# receipt that filled 100,000 lines peaked at 564 MB holding them all, at 267 MB in steps, at 186 MB once its
# queue was also read in chunks, `PostgresStore._waiting_in_chunks`; at 192 MB since its steps are transactions
# of their own, the peak in the receipt's own transaction, where the steps are cut from the decisions and kept as
# its plan).
FILLS_PER_SAVE = 5_000


@dataclasses.dataclass(frozen=True, slots=True)
class FillsLeft:
    """A receipt's fills not given when its transaction ends: `give_more` gives the next step of them in a
    transaction of its own, until none is left. They are the receipt's plan, committed with the receipt: each step's
    units promised to its lines (`UnitOfWork.promise`), off the SKU's shelf until it is given."""

    command: ReceiveStock
    steps: tuple[list[Fill], ...] | None  # as decided; None once a step had to be given as its lines are now
    number: int  # the plan's number of the first step left
    size: int  # fills a step, about
    version: int | None  # the SKU's queue version its last step left: any other means the queue changed since
    outcome: Outcome  # what the receipt's message came to: PROCESSED, or DUPLICATE for one resumed


def receive_stock(
    command: ReceiveStock, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime, *, fills_per_step: int | None = None
) -> Outcome | FillsLeft:
    receipt = command.receipt
    size = fills_per_step or FILLS_PER_SAVE
    if not _first_time(uow, command):
        return _resume(command, uow, shop, now, size)
    uow.add_receipt(receipt, command.event_id)
    if receipt.purchase_order_id is not None:
        uow.consume_restock(receipt)
    decided = _decide_fills(uow, [receipt.sku], _receipt_cause(command), shop, now)
    return _give_in_steps(command, _steps(decided, size), (), size, uow, shop, now, Outcome.PROCESSED)


def give_more(left: FillsLeft, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime) -> Outcome | FillsLeft:
    """The next step of a receipt's plan, in a unit of work of its own (the SKU is locked again here). It is given
    as decided while the SKU's queue version is the one the last step left; if anything else changed the queue
    since (an order, a cancellation, another worker giving steps of the same plan: the receipt again), each line
    is given what it was promised as it is now (`_as_planned`). Steps no longer in the plan were given, or given
    back, by another transaction."""
    cause, sku = _receipt_cause(left.command), left.command.receipt.sku
    uow.lock_stock([sku])
    plan = uow.plan(cause)
    if not plan:
        return left.outcome
    trusted = (
        left.steps is not None
        and (plan[0].step, len(plan)) == (left.number, len(left.steps))
        and uow.queue_version(sku) == left.version
    )
    if not trusted:
        log.info("receipt_plan_given_as_lines_are", sku=sku, cause=cause, step=plan[0].step, steps=len(plan))
    decided = left.steps if trusted else None
    return _give_in_steps(left.command, decided, plan, left.size, uow, shop, now, left.outcome)


def _resume(
    command: ReceiveStock, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime, size: int
) -> Outcome | FillsLeft:
    """A receipt seen before. Its steps may have stopped between two transactions (the worker stopped, the
    database was lost): the steps its plan still holds are given, each in a transaction of its own as before (none
    in this one), or else what is on hand goes to its queue, as it would have gone."""
    plan = uow.plan(_receipt_cause(command))
    if plan:
        log.info("receipt_resumed", sku=command.receipt.sku, cause=plan[0].cause, steps=len(plan))
        return FillsLeft(command, None, plan[0].step, size, None, Outcome.DUPLICATE)
    decided = _decided_again(command, uow, shop, now)
    if not decided:
        return Outcome.DUPLICATE
    return _give_in_steps(command, _steps(decided, size), (), size, uow, shop, now, Outcome.DUPLICATE)


def give_back(command: ReceiveStock, uow: UnitOfWork) -> int:
    """The receipt's steps stopped for good (a defect): what its plan still promises is on hand again, for the next
    event that allocates the SKU's stock. The units given back."""
    uow.lock_stock([command.receipt.sku])
    plan = uow.plan(_receipt_cause(command))
    for step in plan:
        uow.take_step(step)
    return sum(step.units for step in plan)


def _decided_again(command: ReceiveStock, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime) -> list[Fill]:
    """What the receipt's SKU has on hand gives its queue now, but not to an order the receipt gave units to
    already (an order's events of a receipt are named by the receipt and the order: one each)."""
    sku, cause = command.receipt.sku, _receipt_cause(command)
    if _on_hand(uow, shop, sku, now) == 0:  # nothing to give: not even the orders given are read
        return []
    decided = _decide_fills(uow, [sku], cause, shop, now, leaving_out=uow.orders_given(cause))
    if decided:
        log.info("receipt_resumed", sku=sku, cause=cause, lines=len(decided))
    return decided


def _receipt_cause(command: ReceiveStock) -> str:
    return receipt_causes(command.receipt.receipt_id)[0]


def receipt_causes(receipt_id: str) -> tuple[str, str]:
    """The causes a receipt's decisions are recorded under: its own, and, for a receipt given in steps, that of what
    is on hand once its plan's last step is given (see `_give_in_steps`)."""
    return f"inventory-received/{receipt_id}", f"inventory-received-rest/{receipt_id}"


def _give_in_steps(
    command: ReceiveStock,
    decided: Sequence[list[Fill]] | None,
    plan: Sequence[PlanStep],
    size: int,
    uow: UnitOfWork,
    shop: ShopPolicy,
    now: dt.datetime,
    outcome: Outcome,
) -> Outcome | FillsLeft:
    """Give a receipt's steps. Steps just `decided` (no `plan` yet), more than one, are promised to their lines as
    the receipt's plan, numbered from 1, and committed before any is given: every step is then left to a
    transaction of its own. Otherwise the first step is given and announced here, the rest left to transactions of
    their own: `plan`'s steps are each taken as they are given (as `decided`, if given, else as their lines are now).
    An order given units that still has a line of the SKU waiting (the one filled in part, or another the units
    ran out before) is announced once that line's date is settled, with the queue's after the receipt: from the
    step that gives one, every step is given in this transaction, then the queue is dated."""
    cause, sku = _receipt_cause(command), command.receipt.sku
    if not plan and decided is not None and len(decided) > 1:
        # Not the order a fill leaves waiting (the last, whose units run out): promised part of what it wants, its
        # line would be left out of every other queue whole while the plan lasts, and a receipt meanwhile would
        # serve the lines behind it first. Its units stay on hand, where the rules give them, to it first, in any
        # transaction that allocates the SKU meanwhile or else once the plan's last step is given.
        # (`_steps` puts it after every other order: in the last step.)
        waiting = {f.backorder.order_id for f in decided[-1] if not f.completes}
        kept = [f for f in decided[-1] if f.backorder.order_id not in waiting]
        decided = [*decided[:-1], kept] if kept else decided[:-1]
        steps = [_planned(cause, number, sku, step) for number, step in enumerate(decided, start=1)]
        uow.promise(steps)
        log.info("receipt_planned", sku=sku, cause=cause, steps=len(steps), units=sum(step.units for step in steps))
        uow.flush()
        return FillsLeft(command, tuple(decided), 1, size, uow.queue_version(sku), outcome)
    if not plan:
        unannounced = _give(uow, decided[0] if decided else [], cause, shop, now)
    else:
        unannounced = []
        for index, step in enumerate(plan):
            uow.take_step(step)
            if decided is not None:
                fills = _give(uow, decided[index], cause, shop, now)
            else:
                fills = _give(uow, _as_planned(step, uow, shop, now), cause, shop, now)
            states = _by_order(uow.order_lines({f.backorder.order_id for f in fills}))
            # A line of the SKU that still waits, filled in part or not at all (its order's other lines took the
            # last units), is dated anew after the receipt, and its order's announcement carries that date.
            dating = {line.order_id for lines in states.values() for line in lines if line.waiting and line.sku == sku}
            unannounced += [f for f in fills if f.backorder.order_id in dating]
            settled = [f for f in fills if f.backorder.order_id not in dating]
            uow.emit(_announce_fills(cause, command.event_id, settled, states, uow, shop, now))
            uow.flush()
            if not unannounced and index + 1 < len(plan):
                rest = tuple(decided[index + 1 :]) if decided is not None else None
                return FillsLeft(command, rest, plan[index + 1].step, size, uow.queue_version(sku), outcome)
    # A plan's last step given: what is on hand now goes to the SKU's queue by the rules: the units of the order the
    # receipt's last fill left waiting (not promised), what lines took less of than they were promised (one
    # cancelled before its step), and what came meanwhile while every line it would have gone to was promised units
    # (another receipt, which met none of them). An order the receipt gave units to already (another line of it)
    # gets them as a decision of its own, in a shipment of its own: one fulfillment request an order of a cause.
    # (Given in the middle of a plan, a part of a line would have had every step left given at once.)
    by_cause = [(cause, unannounced)]
    if plan and _on_hand(uow, shop, sku, now):
        fills = _decide_fills(uow, [sku], cause, shop, now)
        given = uow.orders_given(cause, among={f.backorder.order_id for f in fills}) if fills else set()
        unannounced += _give(uow, [f for f in fills if f.backorder.order_id not in given], cause, shop, now)
        if again := [f for f in fills if f.backorder.order_id in given]:
            rest_cause = receipt_causes(command.receipt.receipt_id)[1]
            by_cause.append((rest_cause, _give(uow, again, rest_cause, shop, now)))
    eta_news = _refresh_etas(uow, [sku], cause, shop, now)
    states = _by_order(uow.order_lines({f.backorder.order_id for _, fills in by_cause for f in fills}))
    announced = [_announce_fills(c, command.event_id, fills, states, uow, shop, now) for c, fills in by_cause]
    uow.emit([event for events in announced for event in events] + eta_news)
    return outcome


def _planned(cause: str, number: int, sku: str, fills: Sequence[Fill]) -> PlanStep:
    lines = tuple((f.backorder.order_id, f.backorder.line_id, f.quantity) for f in fills)
    return PlanStep(cause, number, sku, sum(units for _, _, units in lines), lines)


def _as_planned(step: PlanStep, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime) -> list[Fill]:
    """A step of a plan (taken: its units on hand) given to its lines as they are now: each line what it was
    promised, or what of it the rules give it now (a line cancelled since takes nothing; nothing while the product
    is held for its release again)."""
    policy = _policy(uow, shop, step.sku)
    if held_until(policy, now) is not None:
        return []
    promised = uow.step_lines(step)
    lines = {(line.order_id, line.line_id): line for line in uow.order_lines({o for o, _, _ in promised})}
    fills: list[Fill] = []
    for order_id, line_id, units in promised:
        line = lines.get((order_id, line_id))
        if line is None or line.status not in WAITING:
            continue
        backorder = waiting_as_ranked(policy, line.as_backorder())
        fills += allocate([backorder], units, rules=shop.priority, mode=shop.ship_complete_mode, now=now).fills
    return sorted(fills, key=lambda f: f.backorder.order_id)


def cancel_order(command: CancelOrder, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime) -> Outcome:
    # A cancellation has no natural key of its own: the same event again is the duplicate.
    if not _first_time(uow, command):
        return Outcome.DUPLICATE
    cancellation = command.cancellation
    cause = f"order-cancelled/{command.event_id}"
    if not uow.order_lines([cancellation.order_id]):
        uow.add_pending_cancellation(cancellation, command.event_id)
        targets = cancellation.line_ids or ("",)
        uow.emit(
            [
                _answer(
                    cause,
                    cancellation.order_id,
                    line_id,
                    now,
                    LineStatus.CANCEL_PENDING,
                    "order not known yet: the cancellation is kept and applied when the order arrives",
                )
                for line_id in targets
            ]
        )
        return Outcome.PROCESSED
    uow.emit(_cancel_and_reallocate(uow, cancellation, cause, command.event_id, shop, now))
    return Outcome.PROCESSED


def _cancel_and_reallocate(
    uow: UnitOfWork, cancellation: Cancellation, cause: str, caused_by: str, shop: ShopPolicy, now: dt.datetime
) -> list[OutboundEvent]:
    """Cancel, give what the cancellation freed to the next lines at once, and update expected dates."""
    events = _cancel(uow, cancellation, cause, shop, now)
    released = sorted(uow.skus_of_orders([cancellation.order_id]))
    events += _allocate_and_announce(uow, released, cause, caused_by, shop, now, [cancellation.order_id])
    return events + _refresh_etas(uow, released, cause, shop, now)


def expect_restock(command: ExpectRestock, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime) -> Outcome:
    # A purchase-order line is replaced by later events: the same event again is the duplicate.
    if not _first_time(uow, command):
        return Outcome.DUPLICATE
    if uow.expect_restock(command.sku, command.restock, command.decided_at, command.event_id):
        uow.emit(_refresh_etas(uow, [command.sku], f"restock-expected/{command.event_id}", shop, now))
    return Outcome.PROCESSED


def dispatch_shipment(command: DispatchShipment, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime) -> Outcome:
    if not _first_time(uow, command):
        return Outcome.DUPLICATE
    shipped = uow.ship(
        command.shipment_id,
        command.order_id,
        command.carrier,
        command.tracking_number,
        command.estimated_delivery,
        command.dispatched_at,
    )
    if not shipped:
        raise InvalidEvent(f"shipment {command.shipment_id} of order {command.order_id} was never requested")
    cause = f"shipment-dispatched/{command.shipment_id}"
    lines = uow.order_lines([command.order_id])
    events: list[OutboundEvent] = [_status(cause, line, now) for line in lines if line.line_id in shipped]
    events.append(
        CustomerNotification(
            event_id=event_id("customer-notification", cause, command.order_id, NotificationType.ORDER_SHIPPED),
            occurred_at=now,
            order_id=command.order_id,
            customer_id=lines[0].customer_id,
            type=NotificationType.ORDER_SHIPPED,
            lines=tuple(
                NotificationLine(line.line_id, line.sku, line.product_name, shipped[line.line_id], line.status)
                for line in lines
                if line.line_id in shipped
            ),
            cancel_allowed=any(line.waiting for line in lines),
            carrier=command.carrier,
            tracking_number=command.tracking_number,
            estimated_delivery=command.estimated_delivery,
        )
    )
    log.debug("shipped", order_id=command.order_id, shipment_id=command.shipment_id, units=sum(shipped.values()))
    uow.emit(events)
    return Outcome.PROCESSED


SWEEP_ORDERS_PER_TRANSACTION = 200  # a sweep's transactions stay short whatever the backlog
# What a sweep does, in this order (the names its failures are counted under); "listing": what it lists first.
SWEEP_STEPS = ("listing", "release", "stale", "dates", "status_updates")

Progress = Callable[[], None]
# One step of a sweep over some of what it listed (SKUs or orders); returns the events, emitted by the caller.
SweepStep = Callable[[UnitOfWork, ShopPolicy, dt.datetime, list[str]], list[OutboundEvent]]


def sweep_once(
    unit_of_work: UnitOfWorkFactory,
    shop: ShopPolicy,
    as_of: dt.datetime,
    *,
    wait: bool,
    orders_per_transaction: int = SWEEP_ORDERS_PER_TRANSACTION,
    on_progress: Progress | None = None,
    until: Callable[[], bool] | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> int | None:
    """One sweep at `as_of` in bounded transactions; the number of events it sent, or None if another sweep
    was running and `wait` is false.

    The orders waiting when it begins are swept `orders_per_transaction` at a time, each chunk committed
    and reported to `on_progress` (so a supervisor sees a long sweep progress): first the pre-order products
    whose release has come (as many SKUs at a time) have their held units meet their queues, then the stale
    cancellations, then the queues with an expected date that has passed are dated again, then the status updates
    due. Every chunk takes the sweep lock again (it ends with its
    transaction) and re-reads its orders under it, so two sweeps take turns chunk by chunk: a line the
    other one cancelled no longer waits, and a status update is claimed once ever. A sweep that finds the
    lock taken between its chunks (and may not wait) stops there: the other sweep, begun later, covers the rest;
    so does one whose `until()` turns true (the worker is stopping): the next sweep does what it left. A chunk that
    fails (a defect) is logged, reported to `on_failure` with its step (one of SWEEP_STEPS), and skipped.
    """
    with unit_of_work() as uow:
        if not uow.lock_sweep(wait):
            return None
        waiting = _awaiting_stock(uow, uow.all_waiting_lines())
        released = _released_skus(uow, shop, as_of, waiting)
        stale = sorted(_stale_lines(uow, shop, as_of, waiting))
        passed = _dates_passed(waiting, as_of)
        orders = sorted({line.order_id for line in waiting})
    if on_progress is not None:
        on_progress()
    sent = 0
    steps: tuple[tuple[str, SweepStep, list[str]], ...] = (
        ("release", _release_held_stock, released),
        ("stale", _cancel_stale_of, stale),
        ("dates", _date_again, passed),
        ("status_updates", _send_status_updates_of, orders),
    )
    for step, work, keys in steps:
        for begin in range(0, len(keys), max(1, orders_per_transaction)):
            chunk = keys[begin : begin + max(1, orders_per_transaction)]
            if until is not None and until():
                return sent
            try:
                with unit_of_work() as uow:
                    if not uow.lock_sweep(wait):
                        log.info("sweep_yielded", sent=sent)
                        return sent
                    events = work(uow, shop, as_of, chunk)
                    uow.emit(events)
            except StoreUnavailable:
                raise
            except Exception:  # one order's defect must not hold back every order after it
                log.exception("sweep_chunk_failed", step=step, orders=chunk[:20], count=len(chunk))
                if on_failure is not None:
                    on_failure(step)
                continue
            sent += len(events)
            if on_progress is not None:
                on_progress()
    return sent


def sweep(uow: UnitOfWork, shop: ShopPolicy, as_of: dt.datetime) -> list[OutboundEvent]:
    """The time-driven work at `as_of` in one transaction: serve what pre-order releases hold, cancel stale
    backorders, date again the queues whose dates have passed, then send the status updates due.

    The caller holds the sweep lock (one sweep at a time); a status update is claimed per order and
    step in the database, so none is ever sent twice.
    """
    events = _release_held_stock(uow, shop, as_of, _released_skus(uow, shop, as_of, uow.all_waiting_lines()))
    events += _cancel_stale(uow, shop, as_of, _awaiting_stock(uow, uow.all_waiting_lines()))
    events += _date_again(uow, shop, as_of, _dates_passed(_awaiting_stock(uow, uow.all_waiting_lines()), as_of))
    events += _send_status_updates(uow, shop, as_of, _awaiting_stock(uow, uow.all_waiting_lines()))
    uow.emit(events)
    return events


def _released_skus(
    uow: UnitOfWork, shop: ShopPolicy, as_of: dt.datetime, waiting: Iterable[OrderLineState]
) -> list[str]:
    """The SKUs of `waiting` lines whose product has a release date that has come by `as_of`."""
    released = []
    for sku in sorted({line.sku for line in waiting}):
        policy = _policy(uow, shop, sku)
        if policy.available_from is not None and held_until(policy, as_of) is None:
            released.append(sku)
    return released


def _release_held_stock(uow: UnitOfWork, shop: ShopPolicy, as_of: dt.datetime, skus: list[str]) -> list[OutboundEvent]:
    """Pre-order products released by `as_of`: the units received and held before the release meet the queue,
    in priority order, as a receipt's would (the events are returned, not emitted). Nothing to do for a
    product that holds no units: a receipt after the release was allocated when it came."""
    uow.lock_stock(skus)
    events: list[OutboundEvent] = []
    for sku in skus:
        if uow.available(sku) == 0 or held_until(_policy(uow, shop, sku), as_of) is not None:
            continue
        cause = f"release/{sku}/{as_of.isoformat()}"  # one sweep, one cause: ids never collide
        log.info("released", sku=sku, units=uow.available(sku))
        events += _allocate_and_announce(uow, [sku], cause, cause, shop, as_of)
        events += _refresh_etas(uow, [sku], cause, shop, as_of)
    return events


def _dates_passed(waiting: Iterable[OrderLineState], as_of: dt.datetime) -> list[str]:
    """The SKUs of `waiting` lines whose expected ship date has passed by `as_of`: no event has dated their queue
    since (a lead time counts from when a queue is dated)."""
    today = as_of.date()
    return sorted(
        {line.sku for line in waiting if line.expected_ship_date is not None and line.expected_ship_date < today}
    )


def _date_again(uow: UnitOfWork, shop: ShopPolicy, as_of: dt.datetime, skus: list[str]) -> list[OutboundEvent]:
    """The queues of `skus` dated as of `as_of`, as an event on them would, and the customers for whom that is news
    told (the events are returned, not emitted): so a status update never tells a date that has passed."""
    uow.lock_stock(skus)
    return _refresh_etas(uow, skus, f"dates/{as_of.isoformat()}", shop, as_of)  # one sweep, one cause


def _cancel_stale_of(
    uow: UnitOfWork, shop: ShopPolicy, as_of: dt.datetime, order_ids: list[str]
) -> list[OutboundEvent]:
    return _cancel_stale(uow, shop, as_of, _awaiting_stock(uow, uow.order_lines(order_ids)))


def _send_status_updates_of(
    uow: UnitOfWork, shop: ShopPolicy, as_of: dt.datetime, order_ids: list[str]
) -> list[OutboundEvent]:
    return _send_status_updates(uow, shop, as_of, _awaiting_stock(uow, uow.order_lines(order_ids)))


def _awaiting_stock(uow: UnitOfWork, lines: Iterable[OrderLineState]) -> list[OrderLineState]:
    """The lines that wait for stock still: not those a deep receipt's plan promises units to (given within seconds,
    step by step), which the sweep neither cancels as stale nor tells they are still awaiting inventory."""
    return uow.unpromised(line for line in lines if line.waiting)


def _stale_lines(
    uow: UnitOfWork, shop: ShopPolicy, as_of: dt.datetime, waiting: Iterable[OrderLineState]
) -> dict[str, list[OrderLineState]]:
    """The waiting lines past their SKU's `stale_after_days` at `as_of`, by order (a pre-order's wait
    counts from its product's release)."""
    stale: dict[str, list[OrderLineState]] = defaultdict(list)
    for line in waiting:
        policy = _policy(uow, shop, line.sku)  # the unit of work keeps each SKU's policy
        limit = policy.stale_after_days
        if limit is not None and as_of - waits_from(policy, line.placed_at) > dt.timedelta(days=limit):
            stale[line.order_id].append(line)
    return stale


def _cancel_stale(
    uow: UnitOfWork, shop: ShopPolicy, as_of: dt.datetime, waiting: Iterable[OrderLineState]
) -> list[OutboundEvent]:
    """Cancel the stale ones among `waiting` (the events are returned, not emitted)."""
    events: list[OutboundEvent] = []
    stale = _stale_lines(uow, shop, as_of, waiting)
    if stale:
        uow.lock_stock(uow.skus_of_orders(stale))
    for order_id, lines in sorted(stale.items()):
        days = max(_policy(uow, shop, line.sku).stale_after_days or 0 for line in lines)
        cancellation = Cancellation(
            order_id, tuple(line.line_id for line in lines), CancelReason.STALE, f"waited more than {days} days", as_of
        )
        cause = f"stale/{order_id}/{as_of.isoformat()}"  # one sweep, one cause: ids never collide
        events += _cancel_and_reallocate(uow, cancellation, cause, cause, shop, as_of)
    return events


def _send_status_updates(
    uow: UnitOfWork, shop: ShopPolicy, as_of: dt.datetime, waiting: Iterable[OrderLineState]
) -> list[OutboundEvent]:
    """The status updates due for the orders of `waiting`, each claimed (the events are returned, not emitted).

    An order is told its update under its hold, its lines read again, so that what another transaction decided about
    it since `waiting` was read (units given, a cancellation) is what it is told: an order that no longer waits is
    not told it is still awaiting inventory. Only the orders with an update due and not yet claimed are held, and
    without waiting: one that another transaction holds right now (deciding about it) is told at the next sweep, if
    it still waits; the sweep never waits for a consume transaction, nor the other way round in a cycle.
    """
    due: dict[str, tuple[int, int]] = {}
    for order_id, lines in _by_order(waiting).items():
        update = shop.cadence.due_step(as_of - lines[0].placed_at)
        if update is not None and not uow.status_update_claimed(order_id, update[0]):
            due[order_id] = update
    if not due:
        return []
    held = uow.hold_free_orders(due)
    if len(held) < len(due):
        log.info("status_updates_deferred", orders=sorted(set(due) - held)[:20], count=len(due) - len(held))
    still = _by_order(_awaiting_stock(uow, uow.order_lines(held)))
    events: list[OutboundEvent] = []
    for order_id, (step, day) in due.items():
        if order_id not in still or not uow.claim_status_update(order_id, step):
            continue
        lines = still[order_id]
        expected = order_eta(lines)
        events.append(
            _notification(
                f"status-update/{order_id}/{step}",
                NotificationType.BACKORDER_STATUS_UPDATE,
                lines[0],
                _waiting_lines(lines),
                cancel_allowed=True,
                now=as_of,
                expected_ship_date=expected,
                reason=f"day {day}: still awaiting inventory"
                + (f"; expected to ship {expected.isoformat()}" if expected else "; expected ship date unknown"),
            )
        )
    return events


def set_product_policy(command: SetProductPolicy, uow: UnitOfWork, shop: ShopPolicy, now: dt.datetime) -> Outcome:
    if not _first_time(uow, command):
        return Outcome.DUPLICATE
    kept = uow.set_policy(command.sku, command.policy, command.decided_at, command.event_id)
    if kept:
        cause = f"product-policy/{command.event_id}"
        events: list[OutboundEvent] = []
        if uow.available(command.sku) and held_until(command.policy, now) is None:
            # What was held meets the queue now: the release was brought forward to today or withdrawn, or it came
            # and no sweep has served what it held yet (a sweep serves the held units of a product with a release date).
            events += _allocate_and_announce(uow, [command.sku], cause, command.event_id, shop, now)
        # A new lead time (or release) moves the dates of what waits beyond the expected restocks.
        uow.emit(events + _refresh_etas(uow, [command.sku], cause, shop, now))
    log.info("product_policy", sku=command.sku, kept=kept, **dataclasses.asdict(command.policy))
    return Outcome.PROCESSED


# ------------------------------------------------------------------------------------------ the rules


def _policy(uow: UnitOfWork, shop: ShopPolicy, sku: str) -> ProductPolicy:
    return uow.policy(sku) or shop.product


def _held_reason(release: dt.date) -> str:
    return f"pre-order: nothing ships before the release on {release.isoformat()}"


def waiting_queue(uow: UnitOfWork, shop: ShopPolicy, sku: str) -> Sequence[Backorder]:
    """The SKU's waiting lines as the rules see them: a pre-order's wait counts from its product's release."""
    lines = uow.waiting_lines(sku)
    policy = _policy(uow, shop, sku)
    if policy.available_from is None:
        return lines
    return [waiting_as_ranked(policy, line) for line in lines]


def waiting_as_ranked(policy: ProductPolicy, line: Backorder) -> Backorder:
    """The line as the rules rank it: a pre-order waits from its product's release, not from its order."""
    start = waits_from(policy, line.placed_at)
    return dataclasses.replace(line, waits_from=start) if start != line.placed_at else line


def serving_order(uow: UnitOfWork, shop: ShopPolicy, sku: str, now: dt.datetime) -> ServingOrder:
    """The SKU's queue in the order it is served at `now`, each line with its priority. The order kept from
    before is used while time has not changed it, with only the lines changed since ranked again."""
    kept, stale = uow.serving(sku)
    if kept is not None and kept.holds_at(now):
        if not stale:
            return kept
        policy = _policy(uow, shop, sku)
        changed = [waiting_as_ranked(policy, line) for line in uow.waiting_backorders(stale)]
        order = kept.changed(set(stale), changed, shop.priority, now)
    else:
        order = rank(waiting_queue(uow, shop, sku), shop.priority, now)
    uow.keep_serving(sku, order)
    return order


def supply(uow: UnitOfWork, shop: ShopPolicy, sku: str, now: dt.datetime) -> Supply:
    """What the SKU's waiting lines are dated against: the units on hand (held ones included), then the
    expected restocks with their suppliers' margins, then the product's lead time; for a product not released
    yet, never before its release plus handling."""
    policy = _policy(uow, shop, sku)
    restocks = uow.expected_supply(sku)
    lateness = uow.supplier_lateness({r.supplier_id for r in restocks})
    return Supply.of(
        restocks,
        on_hand=uow.available(sku),
        margins={supplier: supplier_margin(days, shop.eta) for supplier, days in lateness.items()},
        lead_time_days=policy.lead_time_days,
        today=now.date(),
        rules=shop.eta,
        release=held_until(policy, now),
    )


def dated_queue(
    uow: UnitOfWork, shop: ShopPolicy, sku: str, now: dt.datetime, supplied: Supply | None = None
) -> tuple[DatedQueue, dict[LineKey, Eta]]:
    """The SKU's waiting lines in serving order, dated (`date_queue`) against `supplied` (its `supply` by
    default); and the dates of those of them that may not hold them yet."""
    if supplied is None:
        supplied = supply(uow, shop, sku, now)
    return date_queue(serving_order(uow, shop, sku, now), supplied, uow.dated(sku))


def settle_dates(uow: UnitOfWork, shop: ShopPolicy, sku: str, now: dt.datetime) -> set[str]:
    """Give the SKU's waiting lines the expected ship dates the rules give them now; the orders whose
    dates changed."""
    supplied = supply(uow, shop, sku, now)
    if (
        not supplied.receipts
        and supplied.lead_time_days is None
        and supplied.release is None
        and supplied.on_hand == 0
        and not uow.has_expected_dates(sku)
    ):
        return set()  # every waiting line's date is unknown, and is already stored as unknown
    dated, etas = dated_queue(uow, shop, sku, now, supplied)
    if not dated.etas:
        return set()
    changed = uow.set_expected_dates(etas)
    uow.keep_dated(sku, dated)
    return changed


def _outlook(uow: UnitOfWork, shop: ShopPolicy, placed_at: dt.datetime, eta: Eta | None) -> Outlook:
    """What the promise rules judge of a line: its date, and the supplier it rests on if that one is unreliable."""
    if eta is None:
        return Outlook(placed_at, None)
    if eta.supplier_id is not None:
        days = uow.supplier_lateness([eta.supplier_id]).get(eta.supplier_id, [])
        if is_unreliable(days, shop.eta):
            return Outlook(placed_at, eta.date, eta.supplier_id, reliability(days))
    return Outlook(placed_at, eta.date)


def _first_time(uow: UnitOfWork, command: Command) -> bool:
    """False for a fact already accepted; a conflict if the same key now says something else."""
    kind, key = command.fact
    seen = uow.remember(kind, key, command.event_id, command.content_hash)
    if seen is Seen.DIFFERENT:
        raise ConflictingDuplicate(f"{kind} {key} was accepted before with different content")
    return seen is Seen.NEW


def _judge_shortfalls(
    uow: UnitOfWork, command: PlaceOrder, sku: str, policy: ProductPolicy, shop: ShopPolicy, now: dt.datetime
) -> dict[str, Verdict]:
    """Reject what the product's policy does not let wait. The part stock on hand covers is what a dry
    run of the allocation would give each new line (nothing, before a pre-order product's release); a
    ship-complete line that cannot wait whole is rejected whole. The expected ship date judged against the
    promise limit and the supplier's reliability is the one the line gets at its rank in the queue, worked
    out by the same rules as every line's date (`dated_queue`), again after each rejection (the lines
    behind a rejected one move up)."""
    limit = promise_limit(policy, shop)
    refuse_unreliable = (
        shop.eta.min_on_time_ratio is not None and shop.eta.unreliable_supplier is UnreliableSupplier.REFUSE
    )
    permissive = policy.backorders_allowed and not policy.discontinued and policy.max_backorder_qty_per_customer is None
    if permissive and not shop.refuse_without_restock and limit is None and not refuse_unreliable:
        return {}  # nothing can be refused: no need to work out what would be short
    order = command.order
    got: dict[str, int] = {}
    if (on_hand := _on_hand(uow, shop, sku, now)) > 0:
        dry = allocate(
            waiting_queue(uow, shop, sku),
            on_hand,
            rules=shop.priority,
            mode=shop.ship_complete_mode,
            now=now,
        )
        got = {f.backorder.line_id: f.quantity for f in dry.fills if f.backorder.order_id == order.order_id}
    lines = {line.line_id: line for line in uow.order_lines([order.order_id]) if line.sku == sku}
    waiting = uow.customer_waiting(order.customer_id, sku, other_than_order=order.order_id)
    restock_expected = bool(uow.expected_supply(sku)) or policy.lead_time_days is not None
    dated = (limit is not None or refuse_unreliable) and not is_preorder(policy, order.placed_at)
    dated_now: DatedQueue | None = None
    verdicts: dict[str, Verdict] = {}
    for line in order.lines:
        state = lines.get(line.line_id)
        if state is None or state.wanted == 0:
            continue
        short = state.wanted - got.get(line.line_id, 0)
        outlook = Outlook(order.placed_at, None)
        if dated and short > 0:
            if dated_now is None:
                dated_now, _ = dated_queue(uow, shop, sku, now)
            outlook = _outlook(uow, shop, order.placed_at, dated_now.eta_of((order.order_id, line.line_id)))
        verdict = judge_shortfall(
            short,
            policy=policy,
            customer_waiting=waiting,
            restock_expected=restock_expected,
            refuse_without_restock=shop.refuse_without_restock,
            outlook=outlook,
            max_promise_days=limit,
            refuse_unreliable=refuse_unreliable,
        )
        if verdict.rejected and state.split is SplitPreference.SHIP_COMPLETE:
            verdict = Verdict(0, state.wanted, f"{verdict.reason}; the line ships complete or not at all")
        waiting += verdict.accepted
        if verdict.rejected:
            uow.reject(state, verdict.rejected, f"{verdict.rejected} of {line.quantity} rejected: {verdict.reason}")
            verdicts[line.line_id] = verdict
            dated_now = None
    return verdicts


def shipment_id(cause: str, order_id: str) -> str:
    return event_id("shipment", cause, order_id)


def _allocate(
    uow: UnitOfWork,
    skus: Iterable[str],
    cause: str,
    shop: ShopPolicy,
    now: dt.datetime,
    orders_changed: Iterable[str] = (),
) -> list[Fill]:
    """Allocate what the SKUs have on hand and record it. `orders_changed`: orders whose lines changed
    otherwise (a cancellation), which may now ship complete."""
    return _give(uow, _decide_fills(uow, skus, cause, shop, now), cause, shop, now, orders_changed)


def _decide_fills(
    uow: UnitOfWork,
    skus: Iterable[str],
    cause: str,
    shop: ShopPolicy,
    now: dt.datetime,
    *,
    leaving_out: Collection[str] = (),
) -> list[Fill]:
    """What the SKUs have on hand gives their queues (but not the lines of the orders `leaving_out`), before the
    orders are held (`_give`)."""
    fills: list[Fill] = []
    for sku in skus:
        units = _on_hand(uow, shop, sku, now)
        if units == 0:
            continue
        queue = waiting_queue(uow, shop, sku)
        if leaving_out:
            queue = [line for line in queue if line.order_id not in leaving_out]
        allocation = allocate(queue, units, rules=shop.priority, mode=shop.ship_complete_mode, now=now)
        if allocation.fills:
            log.debug(
                "allocated",
                sku=sku,
                cause=cause,
                units=allocation.units_given,
                units_left=allocation.units_left,
                lines=len(allocation.fills),
                first=[f"{f.backorder.order_id}/{f.backorder.line_id}:{f.quantity}" for f in allocation.fills[:10]],
            )
            fills.extend(allocation.fills)
    return fills


def _give(
    uow: UnitOfWork,
    fills: list[Fill],
    cause: str,
    shop: ShopPolicy,
    now: dt.datetime,
    orders_changed: Iterable[str] = (),
) -> list[Fill]:
    """Record the fills decided, as their orders' other lines allow; returns what was given (and released)."""
    # What is decided next about an order (held for ship-complete, released, partial, cancel allowed)
    # depends on its other lines, which another worker may be filling from another SKU right now.
    uow.hold_orders({f.backorder.order_id for f in fills} | set(orders_changed))
    if shop.ship_complete_scope is ShipCompleteScope.ORDER:
        fills = _hold_incomplete_orders(uow, fills)
        to_check = {f.backorder.order_id for f in fills} | set(orders_changed)
        fills += _release_completed_orders(uow, to_check, fills, shop, now, cause)
    if fills:
        uow.record_fills(
            fills, {f.backorder.order_id: shipment_id(cause, f.backorder.order_id) for f in fills}, cause, now
        )
    return fills


def _steps(fills: Sequence[Fill], size: int) -> list[list[Fill]]:
    """The fills cut into steps of about `size` that never split an order (what is decided of an order needs all
    its fills at once): in serving order, the first served first, except that an order a fill leaves waiting (it
    does not complete its line: the last fill of a receipt, whose units run out) goes after every other, so that
    the steps before it can be committed alone. (An order held whole for its other lines, order scope, is found
    as its step is given: see `_give_in_steps`.) Within a step, order-id order: the order their rows are locked
    in, and that of their events. Fills for one step at most stay as decided, in serving order."""
    if len(fills) <= size:
        return [list(fills)] if fills else []
    # An order's fills as the fill itself while it has one (most have): a list an order was 3 MB of a 100,000-line
    # receipt's peak (195.3 to 192.5 MB).
    orders: dict[str, Fill | list[Fill]] = {}
    for fill in fills:
        known = orders.setdefault(fill.backorder.order_id, fill)
        if isinstance(known, list):
            known.append(fill)
        elif known is not fill:
            orders[fill.backorder.order_id] = [known, fill]
    settled: list[Fill | list[Fill]] = []
    waiting: list[Fill | list[Fill]] = []
    for order in orders.values():
        (settled if all(f.completes for f in _fills(order)) else waiting).append(order)
    del orders
    steps: list[list[Fill]] = []
    step: list[Fill] = []
    for order in chain(settled, waiting):
        group = _fills(order)
        if step and len(step) + len(group) > size:
            steps.append(step)
            step = []
        step += group
    if step:
        steps.append(step)
    return [sorted(step, key=lambda f: f.backorder.order_id) for step in steps]


def _fills(order: Fill | list[Fill]) -> Sequence[Fill]:
    """An order's fills as `_steps` holds them: the fill itself while it has one."""
    return order if isinstance(order, list) else (order,)


def _on_hand(uow: UnitOfWork, shop: ShopPolicy, sku: str, now: dt.datetime) -> int:
    """The units the SKU may give now: none of a pre-order product before its release (they wait for that day)."""
    units = uow.available(sku)
    return 0 if units and held_until(_policy(uow, shop, sku), now) is not None else units


def _allocate_and_announce(
    uow: UnitOfWork,
    skus: Iterable[str],
    cause: str,
    caused_by: str,
    shop: ShopPolicy,
    now: dt.datetime,
    orders_changed: Iterable[str] = (),
) -> list[OutboundEvent]:
    """Allocate what the SKUs may give, and announce it to the orders that got units."""
    fills = _allocate(uow, skus, cause, shop, now, orders_changed)
    states = _by_order(uow.order_lines({f.backorder.order_id for f in fills}))
    return _announce_fills(cause, caused_by, fills, states, uow, shop, now)


def _covered(line: OrderLineState, fills: dict[tuple[str, str], Fill]) -> bool:
    fill = fills.get((line.order_id, line.line_id))
    return line.allocated + line.reserved + (fill.quantity if fill else 0) >= line.wanted


def _hold_incomplete_orders(uow: UnitOfWork, fills: list[Fill]) -> list[Fill]:
    """Order scope: a ship-complete line that is complete waits until its order's other ship-complete
    lines are complete too."""
    completing = {
        f.backorder.order_id for f in fills if f.backorder.split is SplitPreference.SHIP_COMPLETE and f.completes
    }
    if not completing:
        return fills
    by_line = {(f.backorder.order_id, f.backorder.line_id): f for f in fills}
    incomplete = {
        order_id
        for order_id, lines in _by_order(uow.order_lines(completing)).items()
        if not all(_covered(line, by_line) for line in lines if line.split is SplitPreference.SHIP_COMPLETE)
    }
    return [
        dataclasses.replace(f, holds_complete=True)
        if f.backorder.order_id in incomplete and f.backorder.split is SplitPreference.SHIP_COMPLETE and f.completes
        else f
        for f in fills
    ]


def _release_completed_orders(
    uow: UnitOfWork, order_ids: Iterable[str], fills: Sequence[Fill], shop: ShopPolicy, now: dt.datetime, cause: str
) -> list[Fill]:
    """Order scope: once every ship-complete line of an order is complete, its held lines ship. A held
    line is released by a fill of no new units."""
    if shop.ship_complete_scope is not ShipCompleteScope.ORDER:
        return []
    by_line = {(f.backorder.order_id, f.backorder.line_id): f for f in fills}
    releases = []
    for lines in _by_order(uow.order_lines(order_ids)).values():
        complete = [line for line in lines if line.split is SplitPreference.SHIP_COMPLETE]
        if not all(_covered(line, by_line) for line in complete):
            continue
        for line in complete:
            if line.held and (line.order_id, line.line_id) not in by_line:
                backorder = line.as_backorder()
                releases.append(Fill(backorder, 0, priority(backorder, shop.priority, now)))
    if releases:
        log.info(
            "held_lines_released",
            cause=cause,
            lines=[f"{f.backorder.order_id}/{f.backorder.line_id}" for f in releases],
        )
    return releases


def _cancel(
    uow: UnitOfWork, cancellation: Cancellation, cause: str, shop: ShopPolicy, now: dt.datetime
) -> list[OutboundEvent]:
    """Cancel what has not left yet of the named lines (all lines if none named); answer the rest."""
    lines = uow.order_lines([cancellation.order_id])
    known = {line.line_id: line for line in lines}
    targets = cancellation.line_ids or tuple(known)
    events: list[OutboundEvent] = []
    cancelled: list[tuple[OrderLineState, int]] = []
    refund = False
    for line_id in targets:
        line = known.get(line_id)
        if line is None:
            answer = _answer(cause, cancellation.order_id, line_id, now, LineStatus.UNKNOWN_LINE, "no such line")
            events.append(answer)
            continue
        units = line.wanted - line.allocated  # waiting or reserved; what is allocated is on its way
        if units <= 0:
            # Asked for by name: say why nothing happened (not to a sweep's stale cancellation, which
            # nobody asked for and which met a line cancelled or filled since the sweep listed it). Not of a
            # line cancelled before either: a cancellation that changed nothing is never reported as
            # CANCELLED (contract 1.1), and that line's CANCELLED was sent when it was cancelled.
            if (
                cancellation.line_ids
                and cancellation.reason is not CancelReason.STALE
                and line.status is not LineStatus.CANCELLED
            ):
                events.append(_status(cause, line, now, reason=f"not cancelled: already {line.status.value.lower()}"))
            continue
        needs_refund = _policy(uow, shop, line.sku).payment_timing is PaymentTiming.AT_ORDER
        refund |= needs_refund
        reason = cancellation.reason.value + (f": {cancellation.note}" if cancellation.note else "")
        reason += "; refund due" if needs_refund else "; no payment taken"
        uow.cancel(line, units, cancellation.reason, reason, now)
        cancelled.append((line, units))
    if not cancelled:
        return events
    log.info(
        "cancelled",
        order_id=cancellation.order_id,
        reason=cancellation.reason.value,
        lines=[f"{line.line_id}:{units}" for line, units in cancelled],
    )
    after = {line.line_id: line for line in uow.order_lines([cancellation.order_id])}
    events += [_status(cause, after[line.line_id], now) for line, _ in cancelled]
    events.append(
        _notification(
            cause,
            NotificationType.BACKORDER_CANCELLED,
            lines[0],
            [
                NotificationLine(line.line_id, line.sku, line.product_name, units, LineStatus.CANCELLED)
                for line, units in cancelled
            ],
            cancel_allowed=any(line.waiting for line in after.values()),
            now=now,
            reason=cancellation.reason.value + ("; refund due" if refund else "; no payment taken"),
        )
    )
    return events


# ------------------------------------------------------------------------------------------ events


def _by_order(lines: Iterable[OrderLineState]) -> dict[str, list[OrderLineState]]:
    out: dict[str, list[OrderLineState]] = defaultdict(list)
    for line in lines:
        out[line.order_id].append(line)
    return out


def _announce_fills(
    cause: str,
    caused_by: str,
    fills: Sequence[Fill],
    states: dict[str, list[OrderLineState]],
    uow: UnitOfWork,
    shop: ShopPolicy,
    now: dt.datetime,
) -> list[OutboundEvent]:
    """For each order that got units: its shipment, a status per line that changed, and the good news."""
    events: list[OutboundEvent] = []
    ordered = sorted(fills, key=lambda f: (f.backorder.order_id, f.backorder.line_id))
    for order_id, group in groupby(ordered, key=lambda f: f.backorder.order_id):
        order_fills = list(group)
        lines = states[order_id]
        by_id = {line.line_id: line for line in lines}
        shipping = [f for f in order_fills if f.ships_now]
        if shipping:
            events.append(_fulfillment(cause, caused_by, lines, shipping, uow, shop, now))
        events += [_status(cause, by_id[f.backorder.line_id], now) for f in order_fills]
        if shipping:
            # What still waits keeps its dates (contract 1.1): each shipping line's own while the rest of it waits,
            # and the order's latest at the top
            still_waiting = any(line.waiting for line in lines)
            events.append(
                _notification(
                    cause,
                    NotificationType.BACKORDER_ALLOCATED,
                    lines[0],
                    [_shipping_line(f, by_id[f.backorder.line_id]) for f in shipping],
                    cancel_allowed=still_waiting,
                    now=now,
                    expected_ship_date=order_eta(lines) if still_waiting else None,
                )
            )
    return events


def _shipping_line(fill: Fill, line: OrderLineState) -> NotificationLine:
    """A line of an allocated notice: the units that ship now, and the line's date while the rest of it waits."""
    b = fill.backorder
    date = line.expected_ship_date if line.waiting else None
    return NotificationLine(b.line_id, b.sku, b.product_name, fill.ships_now, line.status, expected_ship_date=date)


def _fulfillment(
    cause: str,
    caused_by: str,
    lines: Sequence[OrderLineState],
    fills: Sequence[Fill],
    uow: UnitOfWork,
    shop: ShopPolicy,
    now: dt.datetime,
) -> FulfillmentRequested:
    first = lines[0]
    timing = {_policy(uow, shop, f.backorder.sku).payment_timing for f in fills if f.ships_now}
    return FulfillmentRequested(
        event_id=event_id("fulfillment-requested", cause, first.order_id),
        occurred_at=now,
        shipment_id=shipment_id(cause, first.order_id),
        order_id=first.order_id,
        customer_id=first.customer_id,
        shipping_service=first.shipping_service,
        lines=tuple(FulfillmentLine(f.backorder.line_id, f.backorder.sku, f.ships_now) for f in fills if f.ships_now),
        partial=any(line.waiting for line in lines),
        capture_payment=PaymentTiming.AT_SHIPMENT in timing,
        caused_by_event_id=caused_by,
    )


def _notification(
    cause: str,
    kind: NotificationType,
    line: OrderLineState,
    lines: Sequence[NotificationLine],
    *,
    cancel_allowed: bool,
    now: dt.datetime,
    reason: str | None = None,
    expected_ship_date: dt.date | None = None,
    named_by: Sequence[str] = (),  # what else tells this notice from another of its kind, cause and order
) -> CustomerNotification:
    return CustomerNotification(
        event_id=event_id("customer-notification", cause, line.order_id, kind, *named_by),
        occurred_at=now,
        order_id=line.order_id,
        customer_id=line.customer_id,
        type=kind,
        lines=tuple(lines),
        cancel_allowed=cancel_allowed,
        reason=reason,
        expected_ship_date=expected_ship_date,
    )


def _waiting_lines(lines: Iterable[OrderLineState]) -> list[NotificationLine]:
    """The lines still to come, with the units still to come and each line's own expected ship date."""
    return [
        NotificationLine(
            line.line_id,
            line.sku,
            line.product_name,
            line.wanted - line.allocated,
            line.status,
            expected_ship_date=line.expected_ship_date,
        )
        for line in lines
        if line.waiting
    ]


def order_eta(lines: Iterable[OrderLineState]) -> dt.date | None:
    """When the order's waiting lines will all have shipped: the latest of their dates, unknown if any is (a line
    held for the rest of its order ships with it)."""
    dates = [line.expected_ship_date for line in lines if line.open_quantity > 0]  # held lines are ready
    if not dates or any(d is None for d in dates):
        return None
    return max(d for d in dates if d is not None)


def _refresh_etas(
    uow: UnitOfWork, skus: Iterable[str], cause: str, shop: ShopPolicy, now: dt.datetime, quiet: Iterable[str] = ()
) -> list[OutboundEvent]:
    """Recompute the expected ship dates of the SKUs' queues; tell the customers for whom it is news
    (except the `quiet` orders, which are being told otherwise)."""
    changed: set[str] = set()
    for sku in sorted(set(skus)):
        changed |= settle_dates(uow, shop, sku, now)
    changed -= set(quiet)
    if not changed:
        return []
    told = uow.eta_told(changed)
    events: list[OutboundEvent] = []
    for order_id, lines in sorted(_by_order(uow.order_lines(changed)).items()):
        waiting = [line for line in lines if line.waiting]
        new = order_eta(waiting)
        before = told.get(order_id)
        if not waiting or not is_news(before, new, shop.eta):
            continue
        assert new is not None
        uow.tell_eta(order_id, new)
        events.append(
            _notification(
                cause,
                NotificationType.BACKORDER_ETA_CHANGED,
                lines[0],
                _waiting_lines(waiting),
                cancel_allowed=True,
                now=now,
                expected_ship_date=new,
                reason=f"expected ship date {before.isoformat() if before else 'unknown'} -> {new.isoformat()}",
                # one cause may move an order's date twice (a receipt consumed again after its release, its held
                # units given then): the second move is news too, not the first notice again
                named_by=(new.isoformat(),),
            )
        )
    return events


def _status(
    cause: str,
    line: OrderLineState,
    now: dt.datetime,
    reason: str | None = None,
) -> BackorderStatusChanged:
    """The line as it is now. `quantity_allocated` counts the units released to shipping, `quantity_reserved`
    those held until the line (or its order) can ship complete (contract 1.1)."""
    set_aside = line.allocated + line.reserved
    cancelled = line.status is LineStatus.CANCELLED
    return BackorderStatusChanged(
        event_id=event_id("backorder-status", cause, line.order_id, line.line_id),
        occurred_at=now,
        order_id=line.order_id,
        line_id=line.line_id,
        sku=line.sku,
        status=line.status,
        quantity_ordered=line.ordered,
        quantity_allocated=line.allocated,
        quantity_backordered=max(0, line.wanted - set_aside),
        expected_ship_date=line.expected_ship_date if line.waiting else None,
        reason=reason if reason is not None else line.reason,
        quantity_reserved=line.reserved,
        cancel_reason=line.cancel_reason if cancelled else None,
    )


def _answer(
    cause: str, order_id: str, line_id: str, now: dt.datetime, status: LineStatus, reason: str
) -> BackorderStatusChanged:
    """The reply to a cancellation that changed nothing for a line the worker does not know: `CANCEL_PENDING`
    (the order is not known yet) or `UNKNOWN_LINE` (the order has no such line); never `CANCELLED`."""
    return BackorderStatusChanged(
        event_id=event_id("backorder-status", cause, order_id, line_id),
        occurred_at=now,
        order_id=order_id,
        line_id=line_id,
        sku="",
        status=status,
        quantity_ordered=0,
        quantity_allocated=0,
        quantity_backordered=0,
        reason=reason,
    )
