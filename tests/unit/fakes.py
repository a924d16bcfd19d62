"""An in-memory UnitOfWork, so handlers can be tested without a database."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from worker.domain.events import OutboundEvent
from worker.domain.model import WAITING, Backorder, Fill, LineStatus, Order, StockReceipt
from worker.service.messages import InboundMessage, RejectedMessage
from worker.service.ports import Seen


@dataclass
class FakeState:
    facts: dict[tuple[str, str], bytes] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    line_state: dict[tuple[str, str], tuple[int, LineStatus]] = field(default_factory=dict)
    available: dict[str, int] = field(default_factory=dict)
    allocations: list[tuple[str, str, str, int, str, str]] = field(default_factory=list)
    outbox: list[OutboundEvent] = field(default_factory=list)
    dead: list[tuple[InboundMessage, RejectedMessage]] = field(default_factory=list)


class FakeUnitOfWork:
    def __init__(self, state: FakeState | None = None) -> None:
        self.state = state or FakeState()

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
        known = self.state.facts.setdefault((kind, natural_key), content_hash)
        if known is content_hash:
            return Seen.NEW
        return Seen.SAME if known == content_hash else Seen.DIFFERENT

    def add_order(self, order: Order, event_id: str) -> None:
        self.state.orders[order.order_id] = order
        for line in order.lines:
            self.state.line_state[(order.order_id, line.line_id)] = (0, LineStatus.BACKORDERED)

    def add_receipt(self, receipt: StockReceipt, event_id: str) -> None:
        self.state.available[receipt.sku] += receipt.quantity

    def available(self, sku: str) -> int:
        return self.state.available[sku]

    def waiting_lines(self, sku: str) -> Sequence[Backorder]:
        out = []
        for order in self.state.orders.values():
            for line in order.lines:
                allocated, status = self.state.line_state[(order.order_id, line.line_id)]
                if line.sku == sku and status in WAITING:
                    out.append(
                        Backorder(
                            order.order_id,
                            line.line_id,
                            sku,
                            line.product_name,
                            order.customer_id,
                            order.shipping_service,
                            order.placed_at,
                            line.quantity,
                            allocated,
                        )
                    )
        return out

    def record_fills(
        self, sku: str, fills: Sequence[Fill], shipment_ids: Mapping[str, str], cause: str, at: dt.datetime
    ) -> None:
        for f in fills:
            b = f.backorder
            self.state.line_state[(b.order_id, b.line_id)] = (f.allocated_after, f.status_after)
            self.state.allocations.append((b.order_id, b.line_id, sku, f.quantity, shipment_ids[b.order_id], cause))
            self.state.available[sku] -= f.quantity
        assert self.state.available[sku] >= 0

    def open_units(self, order_ids: Iterable[str]) -> dict[str, int]:
        out = {}
        for order_id in order_ids:
            order = self.state.orders[order_id]
            out[order_id] = sum(
                line.quantity - self.state.line_state[(order_id, line.line_id)][0]
                for line in order.lines
                if self.state.line_state[(order_id, line.line_id)][1] in WAITING
            )
        return out

    def emit(self, events: Sequence[OutboundEvent]) -> None:
        self.state.outbox.extend(events)

    def dead_letter(self, message: InboundMessage, error: RejectedMessage, at: dt.datetime) -> bool:
        self.state.dead.append((message, error))
        return True
