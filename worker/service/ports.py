"""What the service layer needs from the outside, as protocols. The adapters implement them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from enum import StrEnum
from typing import Any, Protocol

from worker.domain.events import OutboundEvent
from worker.domain.model import Backorder, Fill, Order, StockReceipt
from worker.service.messages import InboundMessage, RejectedMessage


class Seen(StrEnum):
    NEW = "new"
    SAME = "same"  # the same natural key with the same content: a duplicate
    DIFFERENT = "different"  # the same natural key with other content: a conflict


class StoreUnavailable(Exception):
    """The database cannot be reached or gave up on the transaction; the whole batch is retried later."""


class Decoder(Protocol):
    def decode(self, value: bytes | None) -> tuple[str, Mapping[str, Any]]:
        """(record full name, record); raises UndecodableMessage or UnknownSchema."""
        ...


class UnitOfWork(Protocol):
    """One database transaction around a batch. Every method runs inside it."""

    def lock_stock(self, skus: Iterable[str]) -> None:
        """Lock the stock rows of these SKUs (in a fixed order, so concurrent workers cannot deadlock)."""
        ...

    def savepoint(self) -> AbstractContextManager[None]:
        """Undo one event's writes if it fails; turns data errors into UnprocessableEvent."""
        ...

    def remember(self, kind: str, natural_key: str, event_id: str, content_hash: bytes) -> Seen:
        """Record an inbound fact by its natural key, or say how it compares with the one recorded."""
        ...

    def add_order(self, order: Order, event_id: str) -> None:
        """Record the order with every line waiting (nothing allocated yet)."""
        ...

    def add_receipt(self, receipt: StockReceipt, event_id: str) -> None:
        """Record the receipt and add its units to the SKU's available stock."""
        ...

    def available(self, sku: str) -> int: ...

    def waiting_lines(self, sku: str) -> Sequence[Backorder]: ...

    def record_fills(
        self, sku: str, fills: Sequence[Fill], shipment_ids: Mapping[str, str], cause: str, at: dt.datetime
    ) -> None:
        """Move the filled units from the SKU's available stock to the lines; shipment_ids by order_id."""
        ...

    def open_units(self, order_ids: Iterable[str]) -> dict[str, int]:
        """Units still waiting per order (0 for an order with nothing waiting)."""
        ...

    def emit(self, events: Sequence[OutboundEvent]) -> None:
        """Add events to the outbox; they are published after the transaction commits."""
        ...

    def dead_letter(self, message: InboundMessage, error: RejectedMessage, at: dt.datetime) -> bool:
        """Send the message to the dead-letter topic through the outbox; False if it was sent before."""
        ...


class UnitOfWorkFactory(Protocol):
    def __call__(self) -> AbstractContextManager[UnitOfWork]:
        """A unit of work that commits when the block ends normally and rolls back otherwise."""
        ...


class Clock(Protocol):
    def __call__(self) -> dt.datetime: ...
