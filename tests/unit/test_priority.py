"""Ranking: the configured criteria, earliest deadline first within the need-by rank and FIFO within every
rank, and promotion of lines that waited too long."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests import examples
from tests.unit.test_allocation import NOW as ALLOCATION_NOW
from tests.unit.test_allocation import backorder, queues
from worker.domain.model import Backorder, CustomerTier, ShippingService
from worker.domain.priority import Criterion, PriorityRules, in_priority_order, priority, rank

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


def test_within_the_need_by_rank_the_earliest_deadline_goes_first() -> None:
    queue = [
        backorder("older-later-deadline", 30, 1, need_by=dt.date(2026, 2, 13)),
        backorder("newer-earlier-deadline", 38, 1, need_by=dt.date(2026, 2, 11)),
        backorder("past-deadline", 39, 1, need_by=dt.date(2026, 2, 9)),
        backorder("same-deadline-newest", 39, 1, need_by=dt.date(2026, 2, 13)),
        backorder("vip", 35, 1, tier=CustomerTier.VIP),
    ]
    assert order_of(queue) == [
        "past-deadline",
        "newer-earlier-deadline",
        "older-later-deadline",
        "same-deadline-newest",
        "vip",
    ]


def test_a_need_by_too_far_to_rank_does_not_reorder_its_rank() -> None:
    # Both are VIP; neither deadline is within 3 days, so the VIP rank's usual order (oldest first) holds.
    queue = [
        backorder("old", 30, 1, tier=CustomerTier.VIP, need_by=dt.date(2026, 3, 30)),
        backorder("new", 31, 1, tier=CustomerTier.VIP, need_by=dt.date(2026, 3, 1)),
    ]
    assert order_of(queue) == ["old", "new"]


def test_a_pre_order_waits_from_its_release_not_from_its_order() -> None:
    rules = PriorityRules(starvation_after=dt.timedelta(days=14))
    old = dataclasses.replace(backorder("pre-order", 10, 1), waits_from=dt.datetime(2026, 2, 5, tzinfo=dt.UTC))
    vip = backorder("vip", 40, 1, tier=CustomerTier.VIP)
    assert order_of([old, vip], rules) == ["vip", "pre-order"]  # 30 days since the order, 5 since the release
    assert priority(old, rules, NOW).reason == "rank 5: standard; waited 5 days"


# ------------------------------------------------------------------------------------------ properties

ranks = st.permutations(list(Criterion)).flatmap(lambda order: st.integers(1, len(order)).map(lambda n: order[:n]))
rules_ = st.builds(
    PriorityRules,
    ranks=ranks.map(tuple),
    need_by_within_days=st.integers(0, 10),
    starvation_after=st.none() | st.integers(1, 60).map(lambda d: dt.timedelta(days=d)),
)


@settings(max_examples=examples(300))
@given(queue=queues, rules=rules_)
def test_the_queue_is_served_by_rank_then_earliest_deadline_then_oldest(
    queue: tuple[Backorder, ...], rules: PriorityRules
) -> None:
    served = in_priority_order(queue, rules, ALLOCATION_NOW)
    assert sorted(id(line) for line, _ in served) == sorted(id(line) for line in queue)  # each line once
    for (a, pa), (b, pb) in itertools.pairwise(served):
        assert pa.rank <= pb.rank
        if pa.rank != pb.rank:
            continue
        assert pa.criterion == pb.criterion  # a rank is one criterion (or the starved)
        if pa.criterion == Criterion.NEED_BY.value:
            assert a.need_by is not None and b.need_by is not None
            assert a.need_by <= b.need_by  # earliest deadline first
            if a.need_by == b.need_by:
                assert a.fifo_key < b.fifo_key
        else:
            assert a.fifo_key < b.fifo_key  # oldest first


@settings(max_examples=examples(200))
@given(queue=queues, rules=rules_, seed=st.integers())
def test_the_serving_order_does_not_depend_on_the_order_the_queue_comes_in(
    queue: tuple[Backorder, ...], rules: PriorityRules, seed: int
) -> None:
    shuffled = list(queue)
    random.Random(seed).shuffle(shuffled)
    assert in_priority_order(queue, rules, ALLOCATION_NOW) == in_priority_order(shuffled, rules, ALLOCATION_NOW)


@settings(max_examples=examples(200))
@given(queue=queues, rules=rules_, data=st.data())
def test_an_earlier_deadline_never_loses_its_place_to_a_later_one(
    queue: tuple[Backorder, ...], rules: PriorityRules, data: st.DataObject
) -> None:
    """Moving a need-by line's deadline earlier never moves it later in the queue, where the shop ranks need-by
    lines above the rest (ranked after `standard`, a criterion demotes the lines it matches, as `wholesale` last
    does: a deadline coming near then moves a line behind the others, as that order says)."""
    ranks = rules.ranks
    assume(not (Criterion.NEED_BY in ranks and Criterion.STANDARD in ranks[: ranks.index(Criterion.NEED_BY)]))
    if not queue:
        return
    index = data.draw(st.integers(0, len(queue) - 1))
    line = queue[index]
    if line.need_by is None:
        return
    earlier = dataclasses.replace(line, need_by=line.need_by - dt.timedelta(days=data.draw(st.integers(1, 10))))
    moved = (*queue[:index], earlier, *queue[index + 1 :])

    def place(q: tuple[Backorder, ...], target: Backorder) -> int:
        return next(i for i, (b, _) in enumerate(in_priority_order(q, rules, ALLOCATION_NOW)) if b is target)

    assert place(moved, earlier) <= place(queue, line)


@settings(max_examples=examples(300))
@given(queue=queues, rules=rules_, hours=st.integers(0, 24 * 60))
def test_no_line_changes_rank_before_the_order_says_time_may_change_it(
    queue: tuple[Backorder, ...], rules: PriorityRules, hours: int
) -> None:
    """Ranked at one instant, the order is the one ranking from scratch gives at any instant before `until`
    (the last microsecond included); from `until` on, it is not claimed to hold."""
    order = rank(queue, rules, ALLOCATION_NOW)
    later = ALLOCATION_NOW + dt.timedelta(hours=hours)
    if order.holds_at(later):
        again = rank(queue, rules, later)
        assert [line for line, _ in again.lines] == [line for line, _ in order.lines]
        assert [(p.rank, p.criterion, p.why) for _, p in again.lines] == [
            (p.rank, p.criterion, p.why) for _, p in order.lines
        ]
    if order.until is not None:
        last = order.until - dt.timedelta(microseconds=1)
        assert order.holds_at(last) and not order.holds_at(order.until)
        before = [(p.rank, p.criterion, p.why) for _, p in rank(queue, rules, last).lines]
        assert before == [(p.rank, p.criterion, p.why) for _, p in order.lines]


@settings(max_examples=examples(300))
@given(queue=queues, rules=rules_, data=st.data())
def test_a_kept_order_changed_line_by_line_is_the_order_ranked_from_scratch(
    queue: tuple[Backorder, ...], rules: PriorityRules, data: st.DataObject
) -> None:
    """Lines leaving, changing and joining a kept order put each where ranking the whole queue would."""
    lines = list({(b.order_id, b.line_id): b for b in queue}.values())
    kept = rank(lines, rules, ALLOCATION_NOW)
    later = ALLOCATION_NOW + dt.timedelta(minutes=data.draw(st.integers(0, 600)))
    if not kept.holds_at(later):
        return
    gone = data.draw(st.sets(st.sampled_from([(b.order_id, b.line_id) for b in lines]))) if lines else set()
    changed = [
        dataclasses.replace(b, allocated=0, reserved=0, quantity=b.quantity + 1)
        for b in lines
        if (b.order_id, b.line_id) in gone and data.draw(st.booleans())
    ]
    joining = [dataclasses.replace(b, order_id=f"new-{b.order_id}") for b in data.draw(queues)]
    joining = list({(b.order_id, b.line_id): b for b in joining}.values())
    now_waiting = [b for b in lines if (b.order_id, b.line_id) not in gone] + changed + joining
    gone |= {(b.order_id, b.line_id) for b in joining}
    incremental = kept.changed(gone, changed + joining, rules, later)
    scratch = rank(now_waiting, rules, later)
    assert [b for b, _ in incremental.lines] == [b for b, _ in scratch.lines]
    assert [(p.rank, p.criterion, p.why) for _, p in incremental.lines] == [
        (p.rank, p.criterion, p.why) for _, p in scratch.lines
    ]
    assert incremental.keys == scratch.keys
    if scratch.until is not None:
        assert incremental.until is not None and incremental.until <= scratch.until
    shared = incremental.shared_with(kept)  # what dating keeps of the dates before (`date_queue`)
    assert shared is not None and incremental.lines[:shared] == kept.lines[:shared]
