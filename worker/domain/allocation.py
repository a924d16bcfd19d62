"""Allocation: which waiting lines get the units an SKU has, how many each, and why.

One rule serves a receipt (new units meet the queue), a new order (its lines join the queue and meet
the units on hand) and a cancellation (released units meet the queue), so a new order can never jump
the queue of its SKU. The queue is served in priority order (`worker.domain.priority`).

How a line takes units depends on its split preference:
- SHIP_AVAILABLE_NOW: it takes what there is, up to what it still wants; those units ship now.
- SHIP_COMPLETE: units are reserved for it until it is complete, then all of them ship together.
  When it wants more than is left, the shop's `ShipCompleteMode` decides:
  * HOLD (default, strict priority): it reserves what is left and nothing passes it;
  * FILL: it takes nothing this time and keeps its place, and the lines after it that can ship use
    the units.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from mypy_extensions import mypyc_attr

from worker.domain.model import Backorder, LineStatus, SplitPreference
from worker.domain.priority import Priority, PriorityRules, in_priority_order
from worker.domain.values import interpreted_inits


class ShipCompleteMode(StrEnum):
    HOLD = "hold"
    FILL = "fill"


@mypyc_attr(acyclic=True)  # a frozen value, never in a cycle: compiled, not tracked (README, "Compiled rules")
@dataclass(frozen=True, slots=True)
class Fill:
    """Units given to one waiting line by one allocation, and what that means for the line."""

    backorder: Backorder
    quantity: int
    priority: Priority
    holds_complete: bool = False  # complete, but held until the rest of its order can ship too

    def __init__(
        self,
        backorder: Backorder,
        quantity: int,
        priority: Priority,
        holds_complete: bool = False,
    ) -> None:
        # Written out, not left to `dataclasses`: compiled, a native `__init__` (worker/domain/values.py).
        self.backorder = backorder  # type: ignore[misc]
        self.quantity = quantity  # type: ignore[misc]
        self.priority = priority  # type: ignore[misc]
        self.holds_complete = holds_complete  # type: ignore[misc]

    @property
    def completes(self) -> bool:
        return self.backorder.allocated + self.backorder.reserved + self.quantity >= self.backorder.quantity

    @property
    def ships_now(self) -> int:
        """Units released to the shipping service by this fill (for a completed ship-complete line,
        everything that was reserved for it too)."""
        b = self.backorder
        if b.split is SplitPreference.SHIP_AVAILABLE_NOW:
            return self.quantity
        if self.completes and not self.holds_complete:
            return b.reserved + self.quantity
        return 0

    @property
    def allocated_after(self) -> int:
        return self.backorder.allocated + self.ships_now

    @property
    def reserved_after(self) -> int:
        b = self.backorder
        return b.reserved + self.quantity - self.ships_now

    @property
    def status_after(self) -> LineStatus:
        b = self.backorder
        return LineStatus.of(
            b.quantity, self.allocated_after + self.reserved_after, rejected=b.rejected, cancelled=b.cancelled
        )

    @property
    def reason(self) -> str:
        """Why the line got its units, as told to the OMS: "rank 2 expedited; waited 3 days"."""
        if self.holds_complete:
            return f"{self.priority.short}; held until the whole order can ship"
        if self.reserved_after > 0:
            return (
                f"{self.priority.short}; {self.reserved_after} of {self.backorder.quantity} reserved "
                "until the line can ship complete"
            )
        return self.priority.short


@dataclass(frozen=True, slots=True)
class Allocation:
    fills: tuple[Fill, ...]
    units_left: int

    @property
    def units_given(self) -> int:
        return sum(fill.quantity for fill in self.fills)


def allocate(
    queue: Iterable[Backorder], units: int, *, rules: PriorityRules, mode: ShipCompleteMode, now: dt.datetime
) -> Allocation:
    """Give `units` to the waiting lines in priority order. Pure: same input, same output."""
    if units < 0:
        raise ValueError(f"units must be >= 0, got {units}")
    fills: list[Fill] = []
    left = units
    for line, why in in_priority_order(queue, rules, now):
        if left == 0:
            break
        want = line.open_quantity
        if want <= 0:
            continue
        if line.split is SplitPreference.SHIP_AVAILABLE_NOW or left >= want:
            take = min(left, want)
        elif mode is ShipCompleteMode.HOLD:
            take = left
        else:
            continue
        fills.append(Fill(line, take, why))
        left -= take
    return Allocation(tuple(fills), left)


interpreted_inits(__file__, Fill)
