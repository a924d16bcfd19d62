"""The status-update cadence: which update a waiting order is due for, by its age."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Cadence:
    """Updates on the listed days after the order, then every `every_days` after the last of them."""

    days: tuple[int, ...] = (7, 14)
    every_days: int = 7

    def __post_init__(self) -> None:
        if not self.days or list(self.days) != sorted(set(self.days)) or self.days[0] <= 0 or self.every_days <= 0:
            raise ValueError(
                f"status update days must be increasing and positive: {self.days}, every {self.every_days}"
            )

    def due_step(self, age: dt.timedelta) -> tuple[int, int] | None:
        """(step, day) of the latest update due at `age`, or None before the first. Step 1 is the first."""
        days = age.days
        if days < self.days[0]:
            return None
        listed = [d for d in self.days if d <= days]
        if len(listed) < len(self.days):
            return len(listed), listed[-1]
        extra = (days - self.days[-1]) // self.every_days
        return len(self.days) + extra, self.days[-1] + extra * self.every_days
