"""Priority: the rank of a waiting line, from its order and its age, and the reason for it.

A line's rank is the place in the shop's list of criteria (`PriorityRules.ranks`) of the first
criterion it meets; `standard` is met by every line that meets no other listed criterion, so the
shop can rank wholesale above or below the rest just by where it lists it. A line that has waited
longer than `starvation_after` is promoted to rank 0, above every criterion, so a stream of VIP
orders cannot keep a standard order waiting forever. Within a rank, the oldest order goes first;
within the `need_by` rank, the earliest deadline goes first (earliest-deadline-first), then the oldest.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import operator
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from mypy_extensions import mypyc_attr

from worker.domain.model import Backorder, CustomerTier, ShippingService
from worker.domain.values import interpreted_inits


class Criterion(StrEnum):
    NEED_BY = "need_by"  # a need-by date within `need_by_within_days` (or past)
    EXPEDITED = "expedited"  # the customer paid for expedited shipping
    VIP = "vip"  # a VIP customer
    WHOLESALE = "wholesale"  # a wholesale customer, or an order of at least `large_order_units`
    STANDARD = "standard"  # everything else


DEFAULT_RANKS = (Criterion.NEED_BY, Criterion.EXPEDITED, Criterion.VIP, Criterion.WHOLESALE, Criterion.STANDARD)
STARVED_RANK = 0


@dataclass(frozen=True)
class PriorityRules:
    ranks: tuple[Criterion, ...] = DEFAULT_RANKS
    need_by_within_days: int = 3
    large_order_units: int | None = None
    starvation_after: dt.timedelta | None = dt.timedelta(days=14)

    def __post_init__(self) -> None:
        if len(set(self.ranks)) != len(self.ranks):
            raise ValueError(f"a criterion is listed twice in {list(self.ranks)}")


@mypyc_attr(acyclic=True)  # a frozen value, never in a cycle: compiled, not tracked (README, "Compiled rules")
@dataclass(frozen=True, slots=True)
class Priority:
    rank: int
    criterion: str  # a Criterion value, or "starved"
    why: str  # e.g. "need_by 2026-02-10 within 3 days"
    age: dt.timedelta  # how long the line has waited

    def __init__(
        self,
        rank: int,
        criterion: str,
        why: str,
        age: dt.timedelta,
    ) -> None:
        # Written out, not left to `dataclasses`: compiled, a native `__init__` (worker/domain/values.py).
        self.rank = rank  # type: ignore[misc]
        self.criterion = criterion  # type: ignore[misc]
        self.why = why  # type: ignore[misc]
        self.age = age  # type: ignore[misc]

    @property
    def waited(self) -> str:
        """ "waited 4 days", "waited 3 hours": worded only when asked (a queue is ranked far more often)."""
        return _waited(self.age)

    @property
    def reason(self) -> str:
        """The long form, recorded with every decision: "rank 1: need_by 2026-02-10 within 3 days; waited 4 days"."""
        return f"rank {self.rank}: {self.why}; {self.waited}"

    @property
    def short(self) -> str:
        """The form carried in `backorder-status.reason`: "rank 1 need_by; waited 4 days"."""
        return f"rank {self.rank} {self.criterion}; {self.waited}"


def _waited(age: dt.timedelta) -> str:
    if age >= dt.timedelta(days=1):
        return f"waited {age.days} day{'s' if age.days != 1 else ''}"
    hours = int(age.total_seconds() // 3600)
    return f"waited {hours} hour{'s' if hours != 1 else ''}"


def _why(criterion: Criterion, line: Backorder, rules: PriorityRules, today: dt.date) -> str | None:
    if criterion is Criterion.NEED_BY:
        if line.need_by is not None and line.need_by <= today + dt.timedelta(days=rules.need_by_within_days):
            return f"need_by {line.need_by.isoformat()} within {rules.need_by_within_days} days"
    elif criterion is Criterion.EXPEDITED:
        if line.shipping_service is ShippingService.EXPEDITED:
            return "expedited shipping"
    elif criterion is Criterion.VIP:
        if line.customer_tier is CustomerTier.VIP:
            return "VIP customer"
    elif criterion is Criterion.WHOLESALE:
        if line.customer_tier is CustomerTier.WHOLESALE:
            return "wholesale customer"
        if rules.large_order_units is not None and line.order_units >= rules.large_order_units:
            return f"large order ({line.order_units} units)"
    return None


def priority(line: Backorder, rules: PriorityRules, now: dt.datetime) -> Priority:
    age = max(now - (line.waits_from or line.placed_at), dt.timedelta(0))
    if rules.starvation_after is not None and age > rules.starvation_after:
        return Priority(STARVED_RANK, "starved", f"promoted after {rules.starvation_after.days} days", age)
    today = now.date()
    for rank, criterion in enumerate(rules.ranks, start=1):
        if criterion is Criterion.STANDARD:
            continue
        why = _why(criterion, line, rules, today)
        if why is not None:
            return Priority(rank, criterion.value, why, age)
    rank = rules.ranks.index(Criterion.STANDARD) + 1 if Criterion.STANDARD in rules.ranks else len(rules.ranks) + 1
    return Priority(rank, Criterion.STANDARD.value, "standard", age)


def _ranked(
    queue: Iterable[Backorder], rules: PriorityRules, now: dt.datetime
) -> list[tuple[ServingKey, Backorder, Priority]]:
    return sorted((serving_key(line, why), line, why) for line in queue for why in (priority(line, rules, now),))


def in_priority_order(
    queue: Iterable[Backorder], rules: PriorityRules, now: dt.datetime
) -> list[tuple[Backorder, Priority]]:
    """The queue in the order it is served (see `rank`), each line with its priority; for a single pass,
    such as an allocation, without what `rank` keeps for changing the order later."""
    served = [(line, priority(line, rules, now)) for line in queue]
    served.sort(key=_serving_key_of)  # keys are unique (fifo_key ends with the line's ids): the order of `rank`
    return served


def _serving_key_of(ranked: tuple[Backorder, Priority]) -> ServingKey:
    return serving_key(*ranked)


ServingKey = tuple[int, dt.date, tuple[dt.datetime, str, str]]


def serving_key(line: Backorder, why: Priority) -> ServingKey:
    """Where a ranked line stands in its queue: lines are served in ascending order of this key."""
    deadline = line.need_by if why.criterion == Criterion.NEED_BY.value and line.need_by is not None else dt.date.min
    return (why.rank, deadline, line.fifo_key)


def rank_changes_at(line: Backorder, rules: PriorityRules, now: dt.datetime) -> dt.datetime | None:
    """The first instant after `now` at which `priority(line, rules, ·)` may give another rank, criterion or
    reason (its age aside): when the line would be promoted for starvation, or when its need-by date comes
    within reach. None: time alone never changes it. Early rather than late: an instant where nothing
    changes is allowed, a change before the instant is not."""
    instants = []
    if rules.starvation_after is not None:
        promoted = (line.waits_from or line.placed_at) + rules.starvation_after + dt.timedelta(microseconds=1)
        if promoted > now:
            instants.append(promoted)
    if line.need_by is not None:
        first_day = line.need_by - dt.timedelta(days=rules.need_by_within_days)
        if first_day > now.date():
            instants.append(dt.datetime.combine(first_day, dt.time(), tzinfo=now.tzinfo))
    return min(instants, default=None)


LineKey = tuple[str, str]
_LINE = operator.itemgetter(0)
_SERIALS = itertools.count(1)


@dataclass(frozen=True)
class ServingOrder:
    """A queue ranked at `at`, in the order it is served, each line with its priority (ages as of `at`).
    Time alone does not change that order before `until` (None: never), so it may be used at any instant
    in between; a change to its lines is applied with `changed`, without ranking the rest again."""

    at: dt.datetime
    until: dt.datetime | None
    lines: tuple[tuple[Backorder, Priority], ...]
    keys: tuple[ServingKey, ...]  # each line's serving key, ascending
    members: Mapping[LineKey, ServingKey]  # where each line stands: found by bisection
    # The orders this one was changed from, most recent first, each as (its serial, how many of its first
    # lines this one shares with it, same lines in the same places).
    since: tuple[tuple[int, int], ...] = ()
    serial: int = field(default_factory=lambda: next(_SERIALS), compare=False)

    KEPT_ANCESTORS = 4

    def holds_at(self, now: dt.datetime) -> bool:
        return self.at <= now and (self.until is None or now < self.until)

    def shared_with(self, other: ServingOrder) -> int | None:
        """How many first lines this order shares with `other` (same lines, same places), when it is `other`
        or was changed from it; None when that is not known."""
        if other is self:
            return len(self.lines)
        for serial, shared in self.since:
            if serial == other.serial:
                return shared
        return None

    @cached_property
    def queue(self) -> tuple[Backorder, ...]:
        """The lines alone, in serving order."""
        return tuple(map(_LINE, self.lines))

    def changed(
        self, gone: Collection[LineKey], waiting: Iterable[Backorder], rules: PriorityRules, now: dt.datetime
    ) -> ServingOrder:
        """The order at `now` (where it `holds_at`) once the lines `gone` left it and the `waiting` ones
        (changed or new) joined it where their rank puts them."""
        lines = list(self.lines)
        keys = list(self.keys)
        members = dict(self.members)
        shared = len(lines)  # no line before this place moves
        for left in gone:
            stood = members.pop(left, None)
            if stood is not None:
                at = bisect.bisect_left(keys, stood)
                del keys[at], lines[at]
                shared = min(shared, at)
        until = self.until
        for line in waiting:
            why = priority(line, rules, now)
            key = serving_key(line, why)
            at = bisect.bisect_left(keys, key)
            shared = min(shared, at)
            keys.insert(at, key)
            lines.insert(at, (line, why))
            members[(line.order_id, line.line_id)] = key
            changes = rank_changes_at(line, rules, now)
            if changes is not None and (until is None or changes < until):
                until = changes
        since = ((self.serial, shared), *((serial, min(n, shared)) for serial, n in self.since))
        return ServingOrder(max(self.at, now), until, tuple(lines), tuple(keys), members, since[: self.KEPT_ANCESTORS])


def rank(queue: Iterable[Backorder], rules: PriorityRules, now: dt.datetime) -> ServingOrder:
    """`queue` in the order it is served at `now`: by rank; within the `need_by` rank the earliest need-by
    date first; then oldest first (ties by order and line id)."""
    ranked = _ranked(queue, rules, now)
    changes = [at for _, line, _ in ranked if (at := rank_changes_at(line, rules, now)) is not None]
    return ServingOrder(
        now,
        min(changes, default=None),
        tuple((line, why) for _, line, why in ranked),
        tuple(key for key, _, _ in ranked),
        {(line.order_id, line.line_id): key for key, line, _ in ranked},
    )


interpreted_inits(__file__, Priority)
