"""Running totals of what only grows: units allocated, reserved and rejected, backordered lines, lines
cancelled by reason, orders by outcome, and the fill-time histograms.

Every save appends what it changes of them to `state_delta` (a few rows, no row two workers share); the
state reader folds the deltas into `state_total` and reads that. So the state figures behind /metrics cost
the same at ten million lines as at a thousand. Counting only: what a line's change means is decided in
the domain; here a line's contribution is read off its state before and after.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import psycopg

from worker.domain.model import OrderLineState
from worker.service.ports import Changes, Histogram

FILL_BUCKETS_SECONDS = tuple(
    float(h * 3600) for h in (1, 6, 12, 24, 48, 72, 120, 168, 240, 336, 504, 720, 1080, 1440)
)  # an hour to 60 days; migration 0007 counts the lines written before it in the same buckets

Key = tuple[str, str]


_ALLOCATED, _RESERVED, _REJECTED, _BACKORDERED = (
    ("units_allocated", ""),
    ("units_reserved", ""),
    ("units_rejected", ""),
    ("backordered_lines", ""),
)
# Per histogram: its count's key, its sum's, and each bucket's bound with its key (made once, not per line).
_FILL_KEYS = {
    name: ((name, "count"), (name, "sum_ms"), tuple((name, str(int(bound))) for bound in FILL_BUCKETS_SECONDS))
    for name in ("fill_to_allocation", "fill_to_shipment")
}


def _contribution(line: OrderLineState) -> dict[Key, int]:
    out: dict[Key, int] = {_ALLOCATED: line.allocated, _RESERVED: line.reserved, _REJECTED: line.rejected}
    if line.cancel_reason is not None:
        out[("cancelled_lines", str(line.cancel_reason))] = 1
    if line.backordered:
        out[_BACKORDERED] = 1
        for name, at in (("fill_to_allocation", line.filled_at), ("fill_to_shipment", line.shipped_at)):
            if at is not None:
                count, sum_ms, buckets = _FILL_KEYS[name]
                seconds = (at - line.placed_at).total_seconds()
                out[count] = 1
                out[sum_ms] = math.floor(seconds * 1000 + 0.5)
                # cumulative buckets: every bound at or above the line's time
                for key in buckets[bisect.bisect_left(FILL_BUCKETS_SECONDS, seconds) :]:
                    out[key] = 1
    return out


def deltas(changes: Changes) -> dict[Key, int]:
    """What `changes` add to the running totals."""
    out: dict[Key, int] = defaultdict(int)
    for line in changes.new_lines:
        for key, value in _contribution(line).items():
            out[key] += value
    for line in changes.changed_lines:
        before = changes.lines_before[(line.order_id, line.line_id)]
        for key, value in _contribution(line).items():
            out[key] += value
        for key, value in _contribution(before).items():
            out[key] -= value
    for outcome in changes.outcomes.values():  # set once, when the order is placed
        out[("orders", str(outcome))] += 1
    return {key: value for key, value in out.items() if value}


def statement(changes: Changes) -> tuple[str, tuple[list[Any], ...]] | None:
    """The statement that records what `changes` add to the totals, for the save's pipeline (None: nothing)."""
    found = deltas(changes)
    if not found:
        return None
    keys = sorted(found)
    return (
        "INSERT INTO state_delta (name, key, value) SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[])",
        ([n for n, _ in keys], [k for _, k in keys], [found[key] for key in keys]),
    )


def fold_and_read(conn: psycopg.Connection[Any]) -> dict[Key, int]:
    """Fold the deltas written since the last fold into the totals, and read the totals."""
    with conn.transaction():
        conn.execute(
            """WITH moved AS (DELETE FROM state_delta RETURNING name, key, value)
               INSERT INTO state_total (name, key, value)
               SELECT name, key, sum(value) FROM moved GROUP BY name, key ORDER BY name, key
               ON CONFLICT (name, key) DO UPDATE SET value = state_total.value + EXCLUDED.value"""
        )
        rows = conn.execute("SELECT name, key, value FROM state_total").fetchall()
    return {(name, key): int(value) for name, key, value in rows}


def by_key(totals: Mapping[Key, int], name: str) -> dict[str, int]:
    return {key: value for (n, key), value in totals.items() if n == name and value}


def histogram(totals: Mapping[Key, int], name: str) -> Histogram:
    return Histogram(
        [(bound, totals.get((name, str(int(bound))), 0)) for bound in FILL_BUCKETS_SECONDS],
        totals.get((name, "sum_ms"), 0) / 1000,
        totals.get((name, "count"), 0),
    )
