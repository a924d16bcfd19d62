"""The read side for operators: an SKU's queue in serving order, a simulated receipt, and the tracking view
with the targets the business documents set (defined here once; deploy/prometheus/rules.yml alerts on
the same figures, and a unit test holds the two together)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from worker.domain.model import Backorder, SplitPreference, StockReceipt
from worker.domain.policy import ShopPolicy
from worker.domain.priority import in_priority_order
from worker.service.commands import ReceiveStock
from worker.service.handlers import FillsLeft, give_more, receipt_causes, receive_stock, waiting_as_ranked
from worker.service.ports import Decision, ReadModel, StateFigures, UnitOfWork

BACKORDER_RATE_TARGET = 0.05  # of orders placed, at most this share has a line that waits
FILL_TIME_TARGET_DAYS = 14  # a backorder ships within this many days on average
CANCEL_RATE_TARGET = 0.20  # of lines that waited, at most this share is cancelled


@dataclass(frozen=True)
class QueueEntry:
    position: int
    order_id: str
    line_id: str
    customer_id: str
    rank: int
    reason: str
    waited: dt.timedelta
    wants: int  # units still to come
    reserved: int  # units already held for it (ship complete)
    value_minor: int  # what the units still to come are worth
    split: SplitPreference


@dataclass(frozen=True)
class Queue:
    entries: list[QueueEntry]
    promised_lines: int  # waiting lines left out: a receipt's plan promises them units its next steps give
    promised_units: int


def queue(read: ReadModel, sku: str, shop: ShopPolicy, now: dt.datetime) -> Queue:
    """The SKU's waiting lines in the order the next units would go to them: not those a receipt given in steps
    has promised units to (the next units go past them, as its steps give them theirs)."""
    promised = read.promised_lines(sku)  # read first: a line given by a step in between waits no more
    policy = read.policy(sku) or shop.product
    waiting = [
        waiting_as_ranked(policy, line)  # a pre-order waits from its product's release, as the rules rank it
        for line in read.waiting_lines(sku)
        if (line.order_id, line.line_id) not in promised
    ]
    return Queue(_entries(waiting, shop, now), len(promised), sum(promised.values()))


def _entries(waiting: list[Backorder], shop: ShopPolicy, now: dt.datetime) -> list[QueueEntry]:
    ranked = in_priority_order(waiting, shop.priority, now)
    return [
        QueueEntry(
            position=i,
            order_id=line.order_id,
            line_id=line.line_id,
            customer_id=line.customer_id,
            rank=why.rank,
            reason=why.reason,
            waited=now - line.placed_at,
            wants=line.open_quantity,
            reserved=line.reserved,
            value_minor=line.open_quantity * line.unit_price_minor,
            split=line.split,
        )
        for i, (line, why) in enumerate(ranked, start=1)
    ]


@dataclass(frozen=True)
class Simulation:
    """What a receipt would do now: its decisions, and the SKU's units on hand before it and after them (held
    pre-order units whose release has come, not served by a sweep yet, go out with it too)."""

    decisions: list[Decision]
    on_hand_before: int
    on_hand_after: int


def simulate_receipt(
    uow: UnitOfWork, read: ReadModel, sku: str, units: int, shop: ShopPolicy, now: dt.datetime
) -> Simulation:
    """What a receipt of `units` would do now, done by the real handler.

    The caller must give a unit of work that is rolled back (this one writes like a real receipt) and a
    read model that sees that same transaction, so that the decisions read back are the ones just made.
    """
    receipt_id = f"simulation-{uuid.uuid4()}"
    receipt = StockReceipt(
        receipt_id=receipt_id, sku=sku, quantity=units, received_at=now, supplier_id=None, purchase_order_id=None
    )
    uow.lock_stock([sku])
    before = uow.available(sku)
    done = receive_stock(ReceiveStock(event_id=receipt_id, receipt=receipt, content_hash=b""), uow, shop, now)
    while isinstance(done, FillsLeft):  # a deep receipt's steps, all in this transaction
        done = give_more(done, uow, shop, now)
    uow.flush()
    decisions = [decision for cause in receipt_causes(receipt_id) for decision in read.decisions(cause=cause)]
    return Simulation(decisions, before, uow.available(sku))


def tracking_view(figures: StateFigures, backordered_lines: int, cancelled_lines: int) -> list[str]:
    """The business documents' tracking view, with the targets they set."""
    orders = sum(figures.orders_by_outcome.values())
    backordered = figures.orders_by_outcome.get("PARTLY_BACKORDERED", 0) + figures.orders_by_outcome.get(
        "FULLY_BACKORDERED", 0
    )
    fills = figures.fill_to_shipment
    within = (
        figures.open_lines_expected_within_7_days / figures.open_backorder_lines
        if figures.open_backorder_lines
        else 0.0
    )
    value = (
        ", ".join(
            f"{amount / 100:,.2f} {currency}"
            for currency, amount in sorted(figures.open_value_minor_by_currency.items())
        )
        or "0"
    )
    return [
        f"current backorders: {figures.open_backorder_orders} orders, {figures.open_backorder_lines} lines, "
        f"{figures.open_backorder_units} units",
        f"oldest: {int(figures.oldest_open_age_seconds // 86400)} days",
        f"expected fulfillment: {within:.0%} within 7 days",
        f"total value: {value}",
        f"backorder rate: {backordered / orders if orders else 0:.1%} of {orders} orders "
        f"(target < {BACKORDER_RATE_TARGET:.0%})",
        f"fill time: {fills.total_seconds / fills.count / 86400 if fills.count else 0:.1f} days on average over "
        f"{fills.count} shipped backorders (target < {FILL_TIME_TARGET_DAYS})",
        f"cancel rate: {cancelled_lines / backordered_lines if backordered_lines else 0:.1%} of "
        f"{backordered_lines} backordered lines (target < {CANCEL_RATE_TARGET:.0%})",
    ]
