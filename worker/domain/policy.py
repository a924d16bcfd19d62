"""Backorder policy: per product (the `product-policy` topic) over the shop's defaults (configuration)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum

from worker.domain.allocation import ShipCompleteMode
from worker.domain.eta import EtaRules
from worker.domain.model import PaymentTiming, SplitPreference
from worker.domain.priority import PriorityRules
from worker.domain.timeline import Cadence


class ShipCompleteScope(StrEnum):
    LINE = "line"  # a ship-complete line ships when it is complete
    ORDER = "order"  # ... when every ship-complete line of its order is complete


@dataclass(frozen=True)
class ProductPolicy:
    backorders_allowed: bool = True
    discontinued: bool = False
    max_backorder_qty_per_customer: int | None = None
    payment_timing: PaymentTiming = PaymentTiming.AT_ORDER
    default_split: SplitPreference = SplitPreference.SHIP_AVAILABLE_NOW
    lead_time_days: int | None = None
    stale_after_days: int | None = None
    # Contract 1.1; read and stored, not acted on yet: a pre-order product ships nothing before
    # `available_from`, and `max_promise_days` bounds how far out a backorder may be promised.
    available_from: dt.date | None = None
    max_promise_days: int | None = None


@dataclass(frozen=True)
class ShopPolicy:
    """The shop's rules, from configuration; `product` is the policy of an SKU that has none of its own."""

    product: ProductPolicy = field(default_factory=ProductPolicy)
    priority: PriorityRules = field(default_factory=PriorityRules)
    ship_complete_mode: ShipCompleteMode = ShipCompleteMode.HOLD
    ship_complete_scope: ShipCompleteScope = ShipCompleteScope.LINE
    # Refuse a backorder when no restock is expected and the product has no lead time.
    refuse_without_restock: bool = False
    eta: EtaRules = field(default_factory=EtaRules)
    cadence: Cadence = field(default_factory=Cadence)


@dataclass(frozen=True)
class Verdict:
    """What becomes of the part of a new line that stock on hand does not cover."""

    accepted: int  # units that wait as a backorder
    rejected: int  # units refused
    reason: str | None = None


def judge_shortfall(
    short: int,
    *,
    policy: ProductPolicy,
    customer_waiting: int,
    restock_expected: bool | None = None,
    refuse_without_restock: bool = False,
) -> Verdict:
    """May `short` units wait as a backorder? `customer_waiting` is what this customer already has
    waiting for the same SKU (every open order, this one's earlier lines included)."""
    if short <= 0:
        return Verdict(0, 0)
    if policy.discontinued:
        return Verdict(0, short, "discontinued")
    if not policy.backorders_allowed:
        return Verdict(0, short, "backorders not allowed")
    if refuse_without_restock and restock_expected is False:
        return Verdict(0, short, "no restock expected")
    cap = policy.max_backorder_qty_per_customer
    if cap is None or customer_waiting + short <= cap:
        return Verdict(short, 0)
    allowed = max(0, cap - customer_waiting)
    return Verdict(
        allowed,
        short - allowed,
        f"over the limit of {cap} backordered per customer ({customer_waiting} already waiting)",
    )
