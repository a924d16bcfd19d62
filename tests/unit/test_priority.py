"""Ranking: the configured criteria, FIFO within a rank, and promotion of lines that waited too long."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.unit.test_allocation import backorder
from worker.domain.model import CustomerTier, ShippingService
from worker.domain.priority import Criterion, PriorityRules, in_priority_order, priority

NOW = dt.datetime(2026, 2, 10, 12, tzinfo=dt.UTC)  # backorder(day=d) is placed on 2026-01-01 + d days


DEFAULT = PriorityRules()


def order_of(queue: list, rules: PriorityRules = DEFAULT) -> list[str]:  # type: ignore[type-arg]
    return [line.order_id for line, _ in in_priority_order(queue, rules, NOW)]


def test_default_ranks_need_by_then_expedited_then_vip_then_wholesale_then_the_rest() -> None:
    queue = [
        backorder("standard", 30, 1),
        backorder("wholesale", 34, 1, tier=CustomerTier.WHOLESALE),
        backorder("vip", 35, 1, tier=CustomerTier.VIP),
        backorder("expedited", 36, 1, service=ShippingService.EXPEDITED),
        backorder("need_by", 37, 1, need_by=dt.date(2026, 2, 12)),
        backorder("need_by_far", 31, 1, need_by=dt.date(2026, 3, 30)),
    ]
    assert order_of(queue) == ["need_by", "expedited", "vip", "wholesale", "standard", "need_by_far"]


def test_within_a_rank_oldest_first() -> None:
    queue = [backorder("vip-new", 38, 1, tier=CustomerTier.VIP), backorder("vip-old", 32, 1, tier=CustomerTier.VIP)]
    assert order_of(queue) == ["vip-old", "vip-new"]


def test_wholesale_can_be_ranked_below_the_rest() -> None:
    rules = PriorityRules(ranks=(Criterion.VIP, Criterion.STANDARD, Criterion.WHOLESALE))
    queue = [backorder("wholesale", 30, 1, tier=CustomerTier.WHOLESALE), backorder("standard", 35, 1)]
    assert order_of(queue, rules) == ["standard", "wholesale"]


def test_a_large_order_counts_as_wholesale() -> None:
    rules = PriorityRules(large_order_units=50)
    assert priority(backorder("big", 35, 60), rules, NOW).criterion == "wholesale"
    assert "large order (60 units)" in priority(backorder("big", 35, 60), rules, NOW).reason


def test_a_line_that_waited_past_the_limit_beats_a_new_vip() -> None:
    rules = PriorityRules(starvation_after=dt.timedelta(days=14))
    old = backorder("old-standard", 10, 1)  # placed 2026-01-11: 30 days before NOW
    vip = backorder("new-vip", 40, 1, tier=CustomerTier.VIP)
    assert order_of([vip, old], rules) == ["old-standard", "new-vip"]
    assert priority(old, rules, NOW).reason == "rank 0: promoted after 14 days; waited 30 days"


def test_the_reason_says_why_and_how_long() -> None:
    line = backorder("1", 36, 1, need_by=dt.date(2026, 2, 12))
    p = priority(line, PriorityRules(), NOW)
    assert p.reason == "rank 1: need_by 2026-02-12 within 3 days; waited 4 days"
    assert p.short == "rank 1 need_by; waited 4 days"


def test_a_criterion_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        PriorityRules(ranks=(Criterion.VIP, Criterion.VIP))
