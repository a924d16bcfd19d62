"""The read side on PostgreSQL: the service layer's ReadModel (queue views, decisions, the report) and
the state figures behind /metrics. Nothing here writes, but for folding the running totals' deltas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from worker.adapters.postgres import totals
from worker.adapters.postgres.common import (
    POLICIES_QUERY,
    WAITING_SQL,
    WAITING_STATUSES,
    policies_from,
    select_lines,
    with_timeouts,
)
from worker.domain.model import Backorder
from worker.domain.policy import ProductPolicy
from worker.service.ports import Decision, SkuBacklog, StateFigures


class PostgresReadModel:
    """The ReadModel on one connection: in autocommit it reads what is committed; inside a transaction
    (a simulation's) it reads what that transaction has written too."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def waiting_lines(self, sku: str) -> Sequence[Backorder]:
        lines = select_lines(self._conn, f"l.sku = %s AND l.status IN {WAITING_SQL}", (sku,))
        return [line.as_backorder() for line in lines]

    def policy(self, sku: str) -> ProductPolicy | None:
        kept = policies_from(self._conn.execute(POLICIES_QUERY, ([sku],)).fetchall())
        return kept[0].policy if kept else None

    def promised_lines(self, sku: str) -> dict[tuple[str, str], int]:
        rows = self._conn.execute(
            """SELECT f.order_id, f.line_id, sum(f.units)::int
               FROM receipt_plan p, unnest(p.order_ids, p.line_ids, p.units) AS f(order_id, line_id, units)
               WHERE p.sku = %s GROUP BY f.order_id, f.line_id""",
            (sku,),
        )
        return {(order_id, line_id): units for order_id, line_id, units in rows}

    def decisions(
        self, *, order_id: str | None = None, sku: str | None = None, cause: str | None = None
    ) -> list[Decision]:
        rows = self._conn.execute(
            """SELECT allocated_at, cause, order_id, line_id, sku, quantity, reserved, shipped, rank, reason
               FROM allocation
               WHERE (%(order)s::text IS NULL OR order_id = %(order)s)
                 AND (%(sku)s::text IS NULL OR sku = %(sku)s)
                 AND (%(cause)s::text IS NULL OR cause = %(cause)s)
               ORDER BY allocation_id""",
            {"order": order_id, "sku": sku, "cause": cause},
        ).fetchall()
        return [Decision(*row) for row in rows]

    def state_figures(self) -> StateFigures:
        return state_figures(self._conn)

    def sku_backlog(self) -> list[SkuBacklog]:
        return sku_backlog(self._conn)

    def cancelled_backorders(self) -> tuple[int, int]:
        return cancelled_backorders(self._conn)


def state_figures(conn: psycopg.Connection[Any]) -> StateFigures:
    """The figures behind /metrics and the report. What only grows comes from the running totals
    (`totals`); the open backlog from the waiting lines (the partial index), the outbox from its unpublished
    rows: nothing here reads every line ever written."""
    total = totals.fold_and_read(conn)
    outbox = conn.execute(
        """SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0),
                  (SELECT count(*) FROM outbox WHERE failed_at IS NOT NULL)
           FROM outbox WHERE published_at IS NULL AND failed_at IS NULL"""
    ).fetchone()
    backlog = conn.execute(
        f"""SELECT count(*), coalesce(sum(quantity - quantity_allocated - quantity_reserved - quantity_rejected
                                          - quantity_cancelled), 0),
                   count(DISTINCT order_id), coalesce(extract(epoch FROM now() - min(placed_at)), 0),
                   count(*) FILTER (WHERE expected_ship_date <= current_date + 7),
                   (SELECT coalesce(sum(received_total), 0) FROM stock_level)
            FROM order_line WHERE status IN {WAITING_SQL}"""
    ).fetchone()
    values = conn.execute(
        f"""SELECT o.currency, sum((l.quantity - l.quantity_allocated - l.quantity_reserved - l.quantity_rejected
                                    - l.quantity_cancelled)::numeric * l.unit_price_minor)
            FROM order_line l JOIN customer_order o USING (order_id)
            WHERE l.status IN {WAITING_SQL} GROUP BY o.currency"""
    ).fetchall()
    plans = conn.execute(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(planned_at)), 0) FROM receipt_plan"
    ).fetchone()
    assert outbox is not None and backlog is not None and plans is not None
    return StateFigures(
        outbox_backlog=int(outbox[0]),
        outbox_parked=int(outbox[2]),
        outbox_oldest_age_seconds=float(outbox[1]),
        open_backorder_lines=int(backlog[0]),
        open_backorder_units=int(backlog[1]),
        units_allocated=total.get(("units_allocated", ""), 0),
        units_reserved=total.get(("units_reserved", ""), 0),
        units_rejected=total.get(("units_rejected", ""), 0),
        units_received=int(backlog[5]),
        cancelled_lines_by_reason=totals.by_key(total, "cancelled_lines"),
        orders_by_outcome=totals.by_key(total, "orders"),
        backordered_lines=total.get(("backordered_lines", ""), 0),
        open_backorder_orders=int(backlog[2]),
        oldest_open_age_seconds=float(backlog[3]),
        open_lines_expected_within_7_days=int(backlog[4]),
        open_value_minor_by_currency={currency: int(value) for currency, value in values},
        fill_to_allocation=totals.histogram(total, "fill_to_allocation"),
        fill_to_shipment=totals.histogram(total, "fill_to_shipment"),
        plan_steps_left=int(plans[0]),
        plan_oldest_age_seconds=float(plans[1]),
    )


class StateReader:
    """Reads the state figures on a connection of its own (never the worker's pool), reconnecting as needed."""

    def __init__(self, conninfo: str, name: str = "backorder-worker-state") -> None:
        self._conninfo = conninfo
        self._name = name
        self._conn: psycopg.Connection[Any] | None = None

    def read(self) -> StateFigures:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(with_timeouts(self._conninfo), autocommit=True, application_name=self._name)
        try:
            return state_figures(self._conn)
        except psycopg.Error:
            self.close()  # the next read starts on a fresh connection
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def sku_backlog(conn: psycopg.Connection[Any]) -> list[SkuBacklog]:
    """The open backlog per SKU (and currency), largest value first."""
    rows = conn.execute(
        """SELECT l.sku, count(DISTINCT l.order_id), count(*),
                  sum(l.quantity - l.quantity_allocated - l.quantity_reserved - l.quantity_rejected
                      - l.quantity_cancelled),
                  sum((l.quantity - l.quantity_allocated - l.quantity_reserved - l.quantity_rejected
                       - l.quantity_cancelled)::numeric * l.unit_price_minor),
                  o.currency, extract(day FROM now() - min(l.placed_at))::int,
                  coalesce(max(s.available), 0), coalesce(max(s.promised), 0),
                  min(n.expected_date), coalesce(min(n.units), 0)
           FROM order_line l JOIN customer_order o USING (order_id) LEFT JOIN stock_level s ON s.sku = l.sku
           -- the next restock: the units of the earliest date (not of every open purchase order)
           LEFT JOIN LATERAL (SELECT expected_date, sum(quantity) AS units FROM expected_restock r
                              WHERE r.sku = l.sku AND r.quantity > 0
                              GROUP BY expected_date ORDER BY expected_date LIMIT 1) n ON true
           WHERE l.status = ANY(%s)
           GROUP BY l.sku, o.currency ORDER BY 5 DESC, 1""",
        (WAITING_STATUSES,),
    ).fetchall()
    return [
        SkuBacklog(
            r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]), r[5], int(r[6]), int(r[7]), int(r[8]), r[9], int(r[10])
        )
        for r in rows
    ]


def cancelled_backorders(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(lines that waited for stock, of them cancelled): the cancel rate."""
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE quantity_cancelled > 0) FROM order_line WHERE backordered"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
