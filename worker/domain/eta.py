"""Expected ship dates: available-to-promise against the supply that is on its way.

The queue is walked in allocation order against the expected receipts in date order. A line's date is
the date of the receipt that covers the last unit it waits for, plus a handling margin, plus the
margin its supplier has earned by delivering late before. Past the last expected receipt, the
product's lead time gives a date; with neither, the date is honestly unknown (None).

A supplier whose on-time ratio over its last deliveries is below the shop's bound is unreliable: the
shop either widens its margin (to the worst lateness among those deliveries) or refuses the backorders
whose date rests on it (`worker.domain.policy`). A pre-order product ships nothing before its release
date: its lines' dates are never earlier than that date plus handling (`not_before_release`).
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from worker.domain.model import Backorder
from worker.domain.priority import LineKey, ServingOrder
from worker.domain.values import interpreted_inits


@dataclass(frozen=True, slots=True)
class ExpectedReceipt:
    purchase_order_id: str
    supplier_id: str
    quantity: int
    expected_date: dt.date


class UnreliableSupplier(StrEnum):
    """What the shop does about a supplier below its on-time bound."""

    WIDEN = "widen"  # its margin is the worst lateness of its last deliveries instead of the average
    REFUSE = "refuse"  # backorders whose expected ship date rests on its purchase orders are refused


@dataclass(frozen=True)
class EtaRules:
    handling_days: int = 1
    default_supplier_margin_days: int = 2
    later_by_days: int = 3  # a date that moves later by more than this is news to the customer
    # A supplier on time for less than this share of its last deliveries is unreliable; None: none is.
    min_on_time_ratio: float | None = None
    unreliable_supplier: UnreliableSupplier = UnreliableSupplier.WIDEN


@dataclass(frozen=True, slots=True)
class Eta:
    date: dt.date | None
    basis: str  # "PO-17 from acme expected 2026-02-20 (+1 handling, +2 supplier)", "lead time 21 days", "unknown"
    supplier_id: str | None = None  # whose purchase order the date rests on, if any


def on_time_ratio(days_late: Sequence[int]) -> float | None:
    """The share of a supplier's deliveries that came on time or early; None before its first."""
    if not days_late:
        return None
    return sum(1 for d in days_late if d <= 0) / len(days_late)


def is_unreliable(days_late: Sequence[int], rules: EtaRules) -> bool:
    """Below the shop's on-time bound. A supplier with no delivery recorded yet is not judged."""
    ratio = on_time_ratio(days_late)
    return rules.min_on_time_ratio is not None and ratio is not None and ratio < rules.min_on_time_ratio


def reliability(days_late: Sequence[int]) -> str:
    """In words, for a reason: "on time for 2 of its last 10 deliveries"."""
    on_time = sum(1 for d in days_late if d <= 0)
    return f"on time for {on_time} of its last {len(days_late)} deliver{'y' if len(days_late) == 1 else 'ies'}"


def supplier_margin(days_late: Iterable[int], rules: EtaRules) -> int:
    """How many days after its expected dates a supplier's goods have come, on average (never early);
    for an unreliable supplier when the shop widens, the worst of them."""
    history = [max(0, d) for d in days_late]
    if not history:
        return rules.default_supplier_margin_days
    if rules.unreliable_supplier is UnreliableSupplier.WIDEN and is_unreliable(history, rules):
        return max(history)
    return math.ceil(sum(history) / len(history))


@dataclass(frozen=True)
class Supply:
    """What the dates of a queue's lines rest on besides the queue itself: the same supply dates the same
    lines in the same places alike."""

    receipts: tuple[ExpectedReceipt, ...]  # in the order they are expected to come in
    on_hand: int  # units free now
    margins: tuple[tuple[str, int], ...]  # (supplier, its margin in days), by supplier
    lead_time_days: int | None
    today: dt.date
    rules: EtaRules
    release: dt.date | None = None  # a pre-order product's release (see `not_before_release`)

    def __init__(
        self,
        receipts: tuple[ExpectedReceipt, ...],
        on_hand: int,
        margins: tuple[tuple[str, int], ...],
        lead_time_days: int | None,
        today: dt.date,
        rules: EtaRules,
        release: dt.date | None = None,
    ) -> None:
        # Written out, not left to `dataclasses`: compiled, a native `__init__` (worker/domain/values.py).
        self.receipts = receipts  # type: ignore[misc]
        self.on_hand = on_hand  # type: ignore[misc]
        self.margins = margins  # type: ignore[misc]
        self.lead_time_days = lead_time_days  # type: ignore[misc]
        self.today = today  # type: ignore[misc]
        self.rules = rules  # type: ignore[misc]
        self.release = release  # type: ignore[misc]

    @classmethod
    def of(
        cls,
        receipts: Iterable[ExpectedReceipt],
        *,
        on_hand: int,
        margins: Mapping[str, int],
        lead_time_days: int | None,
        today: dt.date,
        rules: EtaRules,
        release: dt.date | None = None,
    ) -> Supply:
        return cls(
            tuple(sorted(receipts, key=lambda r: (r.expected_date, r.purchase_order_id))),
            on_hand,
            tuple(sorted(margins.items())),
            lead_time_days,
            today,
            rules,
            release,
        )


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
    """Dates for the lines of `queue`, which must come in allocation order. `on_hand` units are free now.
    Lines served from the same receipt share one `Eta`."""
    dated = Supply.of(supply, on_hand=on_hand, margins=margins, lead_time_days=lead_time_days, today=today, rules=rules)
    etas, _ = _date_lines(queue, dated, 0)
    return {(line.order_id, line.line_id): eta for line, eta in zip(queue, etas, strict=True)}


def _date_lines(lines: Sequence[Backorder], supply: Supply, demand: int) -> tuple[list[Eta], list[int]]:
    """The dates of `lines`, which come in allocation order after lines waiting for `demand` units in all;
    and the units waited for up to and including each line."""
    rules, today, receipts = supply.rules, supply.today, supply.receipts
    margins = dict(supply.margins)
    in_stock = _released(Eta(today + dt.timedelta(days=rules.handling_days), "in stock"), supply)
    if supply.lead_time_days is not None:
        lead = dt.timedelta(days=supply.lead_time_days + rules.handling_days)
        beyond = Eta(today + lead, f"lead time {supply.lead_time_days} days")
    else:
        beyond = Eta(None, "unknown: no restock expected and no lead time")
    beyond = _released(beyond, supply)
    by_receipt: dict[int, Eta] = {}
    etas: list[Eta] = []
    demands: list[int] = []
    covered = supply.on_hand  # units that will have come in by the receipt at `index`
    index = -1
    for line in lines:
        demand += line.quantity - line.allocated - line.reserved  # its open quantity, without a call
        demands.append(demand)
        while covered < demand and index + 1 < len(receipts):
            index += 1
            covered += receipts[index].quantity
        if covered < demand:
            etas.append(beyond)
        elif index < 0:
            etas.append(in_stock)
        else:
            eta = by_receipt.get(index)
            if eta is None:
                receipt = receipts[index]
                margin = margins.get(receipt.supplier_id, rules.default_supplier_margin_days)
                eta = by_receipt[index] = _released(
                    Eta(
                        max(receipt.expected_date, today) + dt.timedelta(days=rules.handling_days + margin),
                        f"{receipt.purchase_order_id} from {receipt.supplier_id} expected "
                        f"{receipt.expected_date.isoformat()} (+{rules.handling_days} handling, +{margin} supplier)",
                        receipt.supplier_id,
                    ),
                    supply,
                )
            etas.append(eta)
    return etas, demands


def _released(eta: Eta, supply: Supply) -> Eta:
    return eta if supply.release is None else released(eta, supply.release, supply.rules)


@dataclass(frozen=True)
class DatedQueue:
    """The lines of a serving order dated against a supply: `etas[i]` is the date of `order.lines[i]`, and
    `demand[i]` the units waited for by the lines up to and including it."""

    order: ServingOrder
    supply: Supply
    etas: tuple[Eta, ...]
    demand: tuple[int, ...]

    def eta_of(self, key: LineKey) -> Eta | None:
        stands = self.order.members.get(key)
        return None if stands is None else self.etas[bisect.bisect_left(self.order.keys, stands)]


def date_queue(
    order: ServingOrder, supply: Supply, before: DatedQueue | None = None
) -> tuple[DatedQueue, dict[LineKey, Eta]]:
    """The lines of `order` dated against `supply` (as `expected_ship_dates` dates them), and the dates
    of those that may differ from `before`'s: a line's date rests only on the lines before it, so where
    `order` was changed from `before`'s order and the supply is the same, the lines it shares with it keep
    their dates and only the others are dated again; otherwise every line is."""
    if before is not None and before.order is order and before.supply == supply:
        return before, {}
    shared = order.shared_with(before.order) if before is not None and before.supply == supply else None
    if before is None or not shared:
        etas, demand = _date_lines(order.queue, supply, 0)
        return DatedQueue(order, supply, tuple(etas), tuple(demand)), _by_key(order.queue, etas)
    rest = order.queue[shared:]
    etas, demand = _date_lines(rest, supply, before.demand[shared - 1])
    dated = DatedQueue(order, supply, before.etas[:shared] + tuple(etas), before.demand[:shared] + tuple(demand))
    return dated, _by_key(rest, etas)


def _by_key(lines: Sequence[Backorder], etas: Sequence[Eta]) -> dict[LineKey, Eta]:
    return {(line.order_id, line.line_id): eta for line, eta in zip(lines, etas, strict=True)}


def not_before_release(
    etas: Mapping[tuple[str, str], Eta], release: dt.date, rules: EtaRules
) -> dict[tuple[str, str], Eta]:
    """The dates of a pre-order product's lines before its release: nothing ships before `release`, so no
    date is earlier than it plus handling; past the supply the worker knows of, the release (the merchant's
    announcement) is the date."""
    return {key: released(eta, release, rules) for key, eta in etas.items()}


def released(eta: Eta, release: dt.date, rules: EtaRules) -> Eta:
    """One date of a pre-order product's line (see `not_before_release`)."""
    first = release + dt.timedelta(days=rules.handling_days)
    if eta.date is None:
        return Eta(first, f"pre-order: released {release.isoformat()} (+{rules.handling_days} handling)")
    if eta.date < first:
        return replace(eta, date=first, basis=f"{eta.basis}; pre-order: released {release.isoformat()}")
    return eta


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


interpreted_inits(__file__, Supply)
