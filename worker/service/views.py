"""What-if and inspection for operators: an SKU's queue in serving order, and a simulated receipt."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from worker.domain.model import SplitPreference, StockReceipt
from worker.domain.policy import ShopPolicy
from worker.domain.priority import in_priority_order
from worker.service.commands import ReceiveStock
from worker.service.handlers import receive_stock
from worker.service.ports import Decision, UnitOfWork


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


def queue(uow: UnitOfWork, sku: str, shop: ShopPolicy, now: dt.datetime) -> list[QueueEntry]:
    """The SKU's waiting lines in the order the next units would go to them."""
    ranked = in_priority_order(uow.waiting_lines(sku), shop.priority, now)
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


def simulate_receipt(uow: UnitOfWork, sku: str, units: int, shop: ShopPolicy, now: dt.datetime) -> list[Decision]:
    """The decisions a receipt of `units` would make now, made by the real handler.

    The caller must give a unit of work that is rolled back: this one writes like a real receipt.
    """
    receipt_id = f"simulation-{uuid.uuid4()}"
    receipt = StockReceipt(
        receipt_id=receipt_id, sku=sku, quantity=units, received_at=now, supplier_id=None, purchase_order_id=None
    )
    uow.lock_stock([sku])
    receive_stock(ReceiveStock(event_id=receipt_id, receipt=receipt, content_hash=b""), uow, shop, now)
    return uow.decisions(cause=f"inventory-received/{receipt_id}")
