"""How the worker's loops wait before trying again: exponential, with jitter, bounded.

The consume loop (a database that is unavailable) and the outbox relay (a database or broker that is) share
it, so that every retry in the worker grows and is bounded the same way. The sweeper needs none: a sweep
that fails is tried again at its next interval.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from `initial_s` up to `max_s`, each shortened by up to `jitter` at random so that
    workers that failed together do not all come back at the same instant; `reset` after a success."""

    def __init__(self, initial_s: float, max_s: float, *, jitter: float = 0.2) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"need 0 < initial_s <= max_s, got {initial_s} and {max_s}")
        self._initial_s = initial_s
        self._max_s = max_s
        self._jitter = jitter
        self._next_s = initial_s

    def next(self) -> float:
        """The delay to wait now; the one after it is longer."""
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self._max_s) * random.uniform(1.0 - self._jitter, 1.0)
        return delay

    def reset(self) -> None:
        self._next_s = self._initial_s
