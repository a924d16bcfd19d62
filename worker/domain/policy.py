"""Backorder policy: per product (the `product-policy` topic) over the shop's defaults (configuration).

When not to take a backorder (`judge_shortfall`): a discontinued product, a product that allows none, no
restock expected (when the shop says so), a per-customer cap, an expected ship date more than
`max_promise_days` after the order (very long lead time), and a date that rests on an unreliable supplier
(when the shop refuses rather than widens its margin). The date judged is the one the worker computes for
the line at its rank in the queue (`Outlook`). A pre-order (an order placed before the product's
`available_from`) is accepted whatever its date: its wait is the product's release, not a shortfall.
"""

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
    # Contract 1.1: a pre-order product ships nothing before `available_from` (orders placed before it are
    # pre-orders), and `max_promise_days` bounds how far after the order a backorder may be promised
    # (None: the shop's default; see `promise_limit`).
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


def promise_limit(policy: ProductPolicy, shop: ShopPolicy) -> int | None:
    """How many days after the order a backorder of the product may be expected to ship: the product's
    own `max_promise_days`, else the shop's; None: no limit."""
    return policy.max_promise_days if policy.max_promise_days is not None else shop.product.max_promise_days


def release_start(release: dt.date) -> dt.datetime:
    """The first instant of a release date (UTC, as every time of the contract)."""
    return dt.datetime.combine(release, dt.time(), tzinfo=dt.UTC)


def is_preorder(policy: ProductPolicy, placed_at: dt.datetime) -> bool:
    """An order placed before the product's release is a pre-order."""
    return policy.available_from is not None and placed_at < release_start(policy.available_from)


def held_until(policy: ProductPolicy, now: dt.datetime) -> dt.date | None:
    """The release date while the product's units are held (nothing of it ships before), else None."""
    if policy.available_from is not None and now < release_start(policy.available_from):
        return policy.available_from
    return None


def waits_from(policy: ProductPolicy, placed_at: dt.datetime) -> dt.datetime:
    """When a line's wait begins: a pre-order's at the product's release (for promotion of lines that waited
    too long and for stale backorders), any other line's when it was placed."""
    if is_preorder(policy, placed_at):
        assert policy.available_from is not None
        return release_start(policy.available_from)
    return placed_at


@dataclass(frozen=True)
class Outlook:
    """What the worker expects of a new line at its rank in the queue, for the rules that judge a promise."""

    placed_at: dt.datetime  # when the order was placed
    expected_ship_date: dt.date | None  # of the line's last unit, from the supply on its way; None: unknown
    unreliable_supplier: str | None = None  # the supplier the date rests on, if below the on-time bound
    supplier_record: str = ""  # that supplier's record in words: "on time for 2 of its last 10 deliveries"


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
    outlook: Outlook | None = None,
    max_promise_days: int | None = None,
    refuse_unreliable: bool = False,
) -> Verdict:
    """May `short` units wait as a backorder? `customer_waiting` is what this customer already has
    waiting for the same SKU (every open order, this one's earlier lines included). `outlook`: the line's
    expected ship date at its rank, judged against `max_promise_days` (see `promise_limit`) and, with
    `refuse_unreliable`, against the reliability of the supplier it rests on; an order placed before the
    product's release is a pre-order, which only a discontinued product or the cap refuses."""
    if short <= 0:
        return Verdict(0, 0)
    if policy.discontinued:
        return Verdict(0, short, "discontinued")
    preorder = outlook is not None and is_preorder(policy, outlook.placed_at)
    if not preorder:
        refusal = _refusal(
            policy, restock_expected, refuse_without_restock, outlook, max_promise_days, refuse_unreliable
        )
        if refusal is not None:
            return Verdict(0, short, refusal)
    cap = policy.max_backorder_qty_per_customer
    if cap is None or customer_waiting + short <= cap:
        return Verdict(short, 0)
    allowed = max(0, cap - customer_waiting)
    return Verdict(
        allowed,
        short - allowed,
        f"over the limit of {cap} backordered per customer ({customer_waiting} already waiting)",
    )


def _refusal(
    policy: ProductPolicy,
    restock_expected: bool | None,
    refuse_without_restock: bool,
    outlook: Outlook | None,
    max_promise_days: int | None,
    refuse_unreliable: bool,
) -> str | None:
    if not policy.backorders_allowed:
        return "backorders not allowed"
    if refuse_without_restock and restock_expected is False:
        return "no restock expected"
    if outlook is None:
        return None
    if max_promise_days is not None:
        date = outlook.expected_ship_date
        if date is None:
            return f"expected ship date unknown; backorders are promised within {max_promise_days} days"
        days = (date - outlook.placed_at.date()).days
        if days > max_promise_days:
            return (
                f"expected to ship {date.isoformat()}, {days} days after the order;"
                f" backorders are promised within {max_promise_days} days"
            )
    if refuse_unreliable and outlook.unreliable_supplier is not None:
        return f"supplier {outlook.unreliable_supplier} is unreliable ({outlook.supplier_record})"
    return None
