"""Expected ship dates: available-to-promise against the supply that is on its way.

The queue is walked in allocation order against the expected receipts in date order. A line's date is
the date of the receipt that covers the last unit it waits for, plus a handling margin, plus the
margin its supplier has earned by delivering late before. Past the last expected receipt, the
product's lead time gives a date; with neither, the date is honestly unknown (None).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from worker.domain.model import Backorder


@dataclass(frozen=True)
class ExpectedReceipt:
    purchase_order_id: str
    supplier_id: str
    quantity: int
    expected_date: dt.date


@dataclass(frozen=True)
class EtaRules:
    handling_days: int = 1
    default_supplier_margin_days: int = 2
    later_by_days: int = 3  # a date that moves later by more than this is news to the customer


@dataclass(frozen=True)
class Eta:
    date: dt.date | None
    basis: str  # "PO-17 from acme expected 2026-02-20 (+1 handling, +2 supplier)", "lead time 21 days", "unknown"


def supplier_margin(days_late: Iterable[int], rules: EtaRules) -> int:
    """How many days after its expected dates a supplier's goods have come, on average (never early)."""
    history = [max(0, d) for d in days_late]
    if not history:
        return rules.default_supplier_margin_days
    return math.ceil(sum(history) / len(history))


def expected_ship_dates(
    queue: Sequence[Backorder],
    supply: Sequence[ExpectedReceipt],
    *,
    on_hand: int,
    margins: Mapping[str, int],
    lead_time_days: int | None,
    today: dt.date,
    rules: EtaRules,
) -> dict[tuple[str, str], Eta]:
    """Dates for the lines of `queue`, which must come in allocation order. `on_hand` units are free now."""
    receipts = sorted(supply, key=lambda r: (r.expected_date, r.purchase_order_id))
    out: dict[tuple[str, str], Eta] = {}
    covered = on_hand  # units that will have come in by the receipt at `index`
    index = -1
    demand = 0
    for line in queue:
        demand += line.open_quantity
        while covered < demand and index + 1 < len(receipts):
            index += 1
            covered += receipts[index].quantity
        key = (line.order_id, line.line_id)
        if covered >= demand:
            if index < 0:
                out[key] = Eta(today + dt.timedelta(days=rules.handling_days), "in stock")
                continue
            receipt = receipts[index]
            margin = margins.get(receipt.supplier_id, rules.default_supplier_margin_days)
            arrives = max(receipt.expected_date, today)
            out[key] = Eta(
                arrives + dt.timedelta(days=rules.handling_days + margin),
                f"{receipt.purchase_order_id} from {receipt.supplier_id} expected {receipt.expected_date.isoformat()}"
                f" (+{rules.handling_days} handling, +{margin} supplier)",
            )
        elif lead_time_days is not None:
            out[key] = Eta(
                today + dt.timedelta(days=lead_time_days + rules.handling_days), f"lead time {lead_time_days} days"
            )
        else:
            out[key] = Eta(None, "unknown: no restock expected and no lead time")
    return out


def is_news(told: dt.date | None, new: dt.date | None, rules: EtaRules) -> bool:
    """Whether a customer told `told` should hear about `new`: later by more than the allowed days,
    or earlier into a nearer week, or a first date after none."""
    if new is None:
        return False
    if told is None:
        return True
    if (new - told).days > rules.later_by_days:
        return True
    return new < told and new.isocalendar()[:2] < told.isocalendar()[:2]
