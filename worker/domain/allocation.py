"""Allocation: which waiting lines get the units an SKU has, and how many each.

One rule serves both a receipt (new units meet the existing queue) and a new order (its lines join
the queue and meet the units on hand), so a new order can never jump the queue of its SKU.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from worker.domain.model import Backorder, Fill


@dataclass(frozen=True)
class Allocation:
    fills: tuple[Fill, ...]
    units_left: int

    @property
    def units_allocated(self) -> int:
        return sum(fill.quantity for fill in self.fills)


def allocate(queue: Iterable[Backorder], units: int) -> Allocation:
    """Give `units` to the waiting lines oldest first (FIFO), each as much as it still needs.

    The queue may come in any order; the result does not depend on it. A line that cannot be
    filled completely takes what is left (ship what is available now) and keeps waiting for the rest.
    """
    if units < 0:
        raise ValueError(f"units must be >= 0, got {units}")
    fills: list[Fill] = []
    left = units
    for backorder in sorted(queue, key=lambda b: b.fifo_key):
        if left == 0:
            break
        take = min(left, backorder.open_quantity)
        if take > 0:
            fills.append(Fill(backorder, take))
            left -= take
    return Allocation(tuple(fills), left)
