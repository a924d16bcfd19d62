"""Retention: what the worker keeps only for a while, and the purge that deletes it in short chunks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg


@dataclass(frozen=True)
class Retention:
    """How long what the worker keeps only for a while is kept (see the README's retention table)."""

    parked_outbox: dt.timedelta
    dead_letters: dt.timedelta
    pending_cancellations: dt.timedelta
    empty_stock_rows: dt.timedelta = dt.timedelta(days=1)


PURGE_CHUNK_ROWS = 5000  # rows deleted per statement: short transactions, no long lock on a big table


def purge(
    conn: psycopg.Connection[Any], retention: Retention, on_progress: Callable[[], None] | None = None
) -> dict[str, int]:
    """Delete what is past its retention, in chunks; rows deleted per kind. `conn` must be in autocommit.

    `on_progress` is called after each statement, so a supervisor sees a long purge progress."""
    statements = {
        # Rows a relay of an earlier version stamped published_at instead of deleting them (one may run beside
        # this one during a rolling upgrade): they are published, and go at once.
        "stamped_outbox": (
            """DELETE FROM outbox WHERE outbox_id IN (SELECT outbox_id FROM outbox
                   WHERE published_at < now() - %(age)s LIMIT %(chunk)s)""",
            dt.timedelta(0),
        ),
        "parked_outbox": (
            """DELETE FROM outbox WHERE outbox_id IN (SELECT outbox_id FROM outbox
                   WHERE failed_at < now() - %(age)s LIMIT %(chunk)s)""",
            retention.parked_outbox,
        ),
        "dead_letters": (
            """DELETE FROM dead_letter WHERE (source_topic, source_partition, source_offset) IN (
                   SELECT source_topic, source_partition, source_offset FROM dead_letter
                   WHERE failed_at < now() - %(age)s LIMIT %(chunk)s)""",
            retention.dead_letters,
        ),
        "pending_cancellations": (
            """DELETE FROM pending_cancellation WHERE (order_id, event_id) IN (
                   SELECT order_id, event_id FROM pending_cancellation
                   WHERE recorded_at < now() - %(age)s LIMIT %(chunk)s)""",
            retention.pending_cancellations,
        ),
        # A stock row that never held anything is what a missing row means; rows a batch has locked
        # are skipped (it may be about to use them), and a batch that needs one again recreates it.
        "empty_stock_rows": (
            """DELETE FROM stock_level WHERE sku IN (
                   SELECT s.sku FROM stock_level s
                   WHERE s.available = 0 AND s.received_total = 0 AND s.updated_at < now() - %(age)s
                     AND NOT EXISTS (SELECT 1 FROM order_line l WHERE l.sku = s.sku
                                     AND l.status IN ('BACKORDERED', 'PARTIALLY_ALLOCATED'))
                     AND NOT EXISTS (SELECT 1 FROM product_policy p WHERE p.sku = s.sku)
                   LIMIT %(chunk)s FOR UPDATE SKIP LOCKED)""",
            retention.empty_stock_rows,
        ),
    }
    purged: dict[str, int] = {}
    for kind, (sql, age) in statements.items():
        total = 0
        while True:
            deleted = conn.execute(sql, {"age": age, "chunk": PURGE_CHUNK_ROWS}).rowcount
            total += deleted
            if on_progress is not None:
                on_progress()
            if deleted < PURGE_CHUNK_ROWS:
                break
        purged[kind] = total
    return purged
