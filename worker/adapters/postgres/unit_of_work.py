"""The write side: the service layer's UnitOfWork on one PostgreSQL transaction around a batch."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from worker.adapters.postgres.common import (
    ORDER_LOCK_CLASS,
    SWEEP_LOCK,
    WAITING_SQL,
    WAITING_STATUSES,
    is_unavailable,
    select_lines,
    store_error,
    transaction,
)
from worker.adapters.postgres.outbox import dead_letter_message, error_text
from worker.domain.allocation import Fill
from worker.domain.eta import Eta, ExpectedReceipt
from worker.domain.events import OutboundEvent, event_id
from worker.domain.model import (
    Backorder,
    Cancellation,
    CancelReason,
    LineStatus,
    Order,
    OrderLineState,
    OrderOutcome,
    PaymentTiming,
    SplitPreference,
    StockReceipt,
)
from worker.domain.policy import ProductPolicy
from worker.service.messages import InboundMessage, RejectedMessage, UnprocessableEvent
from worker.service.ports import Seen

Serializer = Callable[[OutboundEvent], tuple[str, bytes, bytes]]
LATENESS_HISTORY = 10  # a supplier's margin is learned from its last this-many receipts


class PostgresUnitOfWork:
    """The service layer's UnitOfWork on one connection inside one transaction."""

    def __init__(self, conn: psycopg.Connection[Any], serialize: Serializer, dead_letter_topic: str) -> None:
        self._conn = conn
        self._serialize = serialize
        self._dead_letter_topic = dead_letter_topic
        self._available: dict[str, int] = {}
        self._caused_at: dt.datetime | None = None
        self._policies: dict[str, ProductPolicy | None] = {}

    def caused_by(self, written_at: dt.datetime | None) -> None:
        self._caused_at = written_at

    def lock_stock(self, skus: Iterable[str]) -> None:
        ordered = sorted(set(skus))
        if not ordered:
            return
        # One statement creates missing rows and locks all of them in SKU order, so two workers
        # whose batches share SKUs wait for each other instead of deadlocking.
        rows = self._conn.execute(
            """INSERT INTO stock_level AS s (sku) SELECT unnest(%s::text[])
               ON CONFLICT (sku) DO UPDATE SET updated_at = s.updated_at
               RETURNING sku, available""",
            (ordered,),
        ).fetchall()
        self._available.update({sku: available for sku, available in rows})

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        # What this object remembers of the database must roll back with it.
        available, policies = dict(self._available), dict(self._policies)
        try:
            with self._conn.transaction():
                yield
        except psycopg.Error as exc:
            if is_unavailable(exc):
                raise store_error(exc) from exc
            self._available, self._policies = available, policies
            raise UnprocessableEvent(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._available, self._policies = available, policies
            raise

    def remember(self, kind: str, natural_key: str, event_id: str, content_hash: bytes) -> Seen:
        inserted = self._conn.execute(
            """INSERT INTO inbound_fact (kind, natural_key, event_id, content_hash) VALUES (%s, %s, %s, %s)
               ON CONFLICT DO NOTHING RETURNING 1""",
            (kind, natural_key, event_id, content_hash),
        ).fetchone()
        if inserted:
            return Seen.NEW
        row = self._conn.execute(
            "SELECT content_hash FROM inbound_fact WHERE kind = %s AND natural_key = %s", (kind, natural_key)
        ).fetchone()
        assert row is not None
        return Seen.SAME if bytes(row[0]) == content_hash else Seen.DIFFERENT

    # ---- products

    def policy(self, sku: str) -> ProductPolicy | None:
        # Asked several times per event; a policy changes only through set_policy in this same transaction.
        if sku not in self._policies:
            self._policies[sku] = self._read_policy(sku)
        return self._policies[sku]

    def _read_policy(self, sku: str) -> ProductPolicy | None:
        row = self._conn.execute(
            """SELECT backorders_allowed, discontinued, max_backorder_qty_per_customer, payment_timing, default_split,
                      lead_time_days, stale_after_days
               FROM product_policy WHERE sku = %s""",
            (sku,),
        ).fetchone()
        if row is None:
            return None
        return ProductPolicy(
            backorders_allowed=row[0],
            discontinued=row[1],
            max_backorder_qty_per_customer=row[2],
            payment_timing=PaymentTiming(row[3]),
            default_split=SplitPreference(row[4]),
            lead_time_days=row[5],
            stale_after_days=row[6],
        )

    def set_policy(self, sku: str, policy: ProductPolicy, decided_at: dt.datetime, event_id: str) -> bool:
        self._policies.pop(sku, None)
        # The topic is compacted and may be replayed: a policy older than the one kept changes nothing.
        kept = self._conn.execute(
            """INSERT INTO product_policy AS p (sku, backorders_allowed, discontinued, max_backorder_qty_per_customer,
                   payment_timing, default_split, lead_time_days, stale_after_days, decided_at, event_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (sku) DO UPDATE SET
                   backorders_allowed = EXCLUDED.backorders_allowed, discontinued = EXCLUDED.discontinued,
                   max_backorder_qty_per_customer = EXCLUDED.max_backorder_qty_per_customer,
                   payment_timing = EXCLUDED.payment_timing, default_split = EXCLUDED.default_split,
                   lead_time_days = EXCLUDED.lead_time_days, stale_after_days = EXCLUDED.stale_after_days,
                   decided_at = EXCLUDED.decided_at, event_id = EXCLUDED.event_id, recorded_at = now()
               WHERE (p.decided_at, p.event_id) < (EXCLUDED.decided_at, EXCLUDED.event_id)
               RETURNING 1""",
            (
                sku,
                policy.backorders_allowed,
                policy.discontinued,
                policy.max_backorder_qty_per_customer,
                policy.payment_timing,
                policy.default_split,
                policy.lead_time_days,
                policy.stale_after_days,
                decided_at,
                event_id,
            ),
        ).fetchone()
        return kept is not None

    # ---- orders and lines

    def lock_orders(self, order_ids: Iterable[str]) -> None:
        ordered = sorted(set(order_ids))
        if ordered:
            self._conn.execute(
                """SELECT count(pg_advisory_xact_lock(%s, hashtext(o)))
                   FROM (SELECT o FROM unnest(%s::text[]) AS o ORDER BY o) AS orders""",
                (ORDER_LOCK_CLASS, ordered),
            )

    def hold_orders(self, order_ids: Iterable[str]) -> None:
        ordered = sorted(set(order_ids))
        if ordered:
            # Row locks, not advisory ones: they take no room in the lock table however many orders a
            # receipt fills. Taken in order_id order; a deadlock between two workers' batches is retried.
            self._conn.execute(
                "SELECT 1 FROM customer_order WHERE order_id = ANY(%s) ORDER BY order_id FOR UPDATE", (ordered,)
            )

    def skus_of_orders(self, order_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(order_ids))
        if not ids:
            return set()
        rows = self._conn.execute("SELECT DISTINCT sku FROM order_line WHERE order_id = ANY(%s)", (ids,)).fetchall()
        return {row[0] for row in rows}

    def add_order(self, order: Order, event_id: str, splits: Mapping[str, SplitPreference]) -> None:
        self._conn.execute(
            """INSERT INTO customer_order (order_id, customer_id, customer_tier, shipping_service, need_by,
                   split_preference, currency, placed_at, event_id, order_units)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (
                order.order_id,
                order.customer_id,
                order.customer_tier,
                order.shipping_service,
                order.need_by,
                order.split_preference,
                order.currency,
                order.placed_at,
                event_id,
                sum(line.quantity for line in order.lines),
            ),
        )
        with self._conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO order_line (order_id, line_id, sku, product_name, quantity, unit_price_minor,
                       status, split, placed_at, updated_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now())""",
                [
                    (
                        order.order_id,
                        line.line_id,
                        line.sku,
                        line.product_name,
                        line.quantity,
                        line.unit_price_minor,
                        LineStatus.BACKORDERED,
                        splits[line.line_id],
                        order.placed_at,
                    )
                    for line in order.lines
                ],
            )

    def record_outcome(self, order_id: str, outcome: OrderOutcome, backordered_lines: Iterable[str]) -> None:
        self._conn.execute("UPDATE customer_order SET outcome = %s WHERE order_id = %s", (outcome, order_id))
        self._conn.execute(
            "UPDATE order_line SET backordered = true WHERE order_id = %s AND line_id = ANY(%s)",
            (order_id, list(backordered_lines)),
        )

    def order_lines(self, order_ids: Iterable[str]) -> list[OrderLineState]:
        ids = sorted(set(order_ids))
        if not ids:
            return []
        return select_lines(self._conn, "l.order_id = ANY(%s) ORDER BY l.order_id, l.line_id", (ids,))

    def waiting_lines(self, sku: str) -> Sequence[Backorder]:
        lines = select_lines(self._conn, f"l.sku = %s AND l.status IN {WAITING_SQL}", (sku,))
        return [line.as_backorder() for line in lines]

    def customer_waiting(self, customer_id: str, sku: str, other_than_order: str) -> int:
        row = self._conn.execute(
            """SELECT coalesce(sum(l.quantity - l.quantity_rejected - l.quantity_cancelled - l.quantity_allocated), 0)
               FROM order_line l JOIN customer_order o USING (order_id)
               WHERE o.customer_id = %s AND l.sku = %s AND l.order_id <> %s""",
            (customer_id, sku, other_than_order),
        ).fetchone()
        return int(row[0]) if row else 0

    def reject(self, line: OrderLineState, units: int, reason: str) -> None:
        self._conn.execute(
            """UPDATE order_line SET quantity_rejected = quantity_rejected + %s, status = %s, status_reason = %s,
                   updated_at = now()
               WHERE order_id = %s AND line_id = %s""",
            (units, line.status_after_rejecting(units), reason, line.order_id, line.line_id),
        )

    def cancel(self, line: OrderLineState, units: int, code: CancelReason, reason: str, at: dt.datetime) -> None:
        released = line.reserved
        status = LineStatus.of(
            line.wanted - units,
            line.allocated + line.reserved - released,
            rejected=line.rejected,
            cancelled=line.cancelled + units,
        )
        self._conn.execute(
            """UPDATE order_line SET quantity_cancelled = quantity_cancelled + %s, quantity_reserved = 0,
                   status = %s, status_reason = %s, cancel_reason = %s, updated_at = %s
               WHERE order_id = %s AND line_id = %s""",
            (units, status, reason, code, at, line.order_id, line.line_id),
        )
        if released:
            self._change_available(line.sku, released)

    def pending_cancellation(self, order_id: str) -> Cancellation | None:
        rows = self._conn.execute(
            """DELETE FROM pending_cancellation WHERE order_id = %s
               RETURNING line_ids, reason, note, requested_at""",
            (order_id,),
        ).fetchall()
        if not rows:
            return None
        rows.sort(key=lambda r: r[3])
        # Several early cancellations of one order: together they cancel every line any of them names.
        every_line = any(not r[0] for r in rows)
        line_ids = () if every_line else tuple(sorted({line_id for r in rows for line_id in r[0]}))
        first = rows[0]
        return Cancellation(order_id, line_ids, CancelReason(first[1]), first[2], first[3])

    def add_pending_cancellation(self, cancellation: Cancellation, event_id: str) -> None:
        self._conn.execute(
            """INSERT INTO pending_cancellation (order_id, event_id, line_ids, reason, note, requested_at)
               VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            (
                cancellation.order_id,
                event_id,
                list(cancellation.line_ids),
                cancellation.reason,
                cancellation.note,
                cancellation.requested_at,
            ),
        )

    # ---- stock

    def add_receipt(self, receipt: StockReceipt, event_id: str) -> None:
        self._conn.execute(
            """INSERT INTO stock_receipt (receipt_id, sku, quantity, supplier_id, purchase_order_id,
                   received_at, event_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s)""",
            (
                receipt.receipt_id,
                receipt.sku,
                receipt.quantity,
                receipt.supplier_id,
                receipt.purchase_order_id,
                receipt.received_at,
                event_id,
            ),
        )
        self._conn.execute(
            "UPDATE stock_level SET received_total = received_total + %s WHERE sku = %s",
            (receipt.quantity, receipt.sku),
        )
        self._change_available(receipt.sku, receipt.quantity)

    def available(self, sku: str) -> int:
        self._require_locked(sku)
        return self._available[sku]

    def record_fills(self, fills: Sequence[Fill], shipment_ids: Mapping[str, str], cause: str, at: dt.datetime) -> None:
        b = [f.backorder for f in fills]
        self._conn.execute(
            """UPDATE order_line l SET quantity_allocated = f.allocated, quantity_reserved = f.reserved,
                   status = f.status,
                   status_reason = CASE WHEN f.status IN ('REJECTED', 'CANCELLED') THEN l.status_reason
                                        ELSE f.reason END,
                   filled_at = CASE WHEN f.status <> ALL(%s) THEN coalesce(l.filled_at, %s) ELSE l.filled_at END,
                   updated_at = %s
               FROM unnest(%s::text[], %s::text[], %s::int[], %s::int[], %s::text[], %s::text[])
                    AS f(order_id, line_id, allocated, reserved, status, reason)
               WHERE l.order_id = f.order_id AND l.line_id = f.line_id""",
            (
                WAITING_STATUSES,
                at,
                at,
                [x.order_id for x in b],
                [x.line_id for x in b],
                [f.allocated_after for f in fills],
                [f.reserved_after for f in fills],
                [str(f.status_after) for f in fills],
                [f.reason for f in fills],
            ),
        )
        self._conn.execute(
            """INSERT INTO allocation (order_id, line_id, sku, quantity, reserved, shipped, shipment_id, cause, rank,
                   reason, allocated_at)
               SELECT f.order_id, f.line_id, f.sku, f.quantity, f.reserved, f.shipped, f.shipment_id, %s, f.rank,
                      f.reason, %s
               FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::int[], %s::int[], %s::uuid[],
                           %s::int[], %s::text[])
                    AS f(order_id, line_id, sku, quantity, reserved, shipped, shipment_id, rank, reason)""",
            (
                cause,
                at,
                [x.order_id for x in b],
                [x.line_id for x in b],
                [x.sku for x in b],
                [f.quantity for f in fills],
                [max(0, f.quantity - f.ships_now) for f in fills],
                [f.ships_now for f in fills],
                [uuid.UUID(shipment_ids[x.order_id]) if f.ships_now else None for x, f in zip(b, fills, strict=True)],
                [f.priority.rank for f in fills],
                [f.priority.reason for f in fills],
            ),
        )
        taken: dict[str, int] = defaultdict(int)
        for fill in fills:
            taken[fill.backorder.sku] += fill.quantity
        for sku, units in sorted(taken.items()):
            if units:
                self._change_available(sku, -units)

    def _change_available(self, sku: str, delta: int) -> None:
        self._require_locked(sku)
        row = self._conn.execute(
            "UPDATE stock_level SET available = available + %s, updated_at = now() WHERE sku = %s RETURNING available",
            (delta, sku),
        ).fetchone()
        assert row is not None
        self._available[sku] = row[0]

    # ---- expected supply, dates, timeline, shipments

    def expect_restock(self, sku: str, restock: ExpectedReceipt, decided_at: dt.datetime, event_id: str) -> bool:
        kept = self._conn.execute(
            """INSERT INTO expected_restock AS r (purchase_order_id, sku, supplier_id, quantity, expected_date,
                   decided_at, event_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (purchase_order_id, sku) DO UPDATE SET
                   supplier_id = EXCLUDED.supplier_id, quantity = EXCLUDED.quantity,
                   expected_date = EXCLUDED.expected_date, decided_at = EXCLUDED.decided_at,
                   event_id = EXCLUDED.event_id, updated_at = now()
               WHERE (r.decided_at, r.event_id) < (EXCLUDED.decided_at, EXCLUDED.event_id)
               RETURNING 1""",
            (
                restock.purchase_order_id,
                sku,
                restock.supplier_id,
                restock.quantity,
                restock.expected_date,
                decided_at,
                event_id,
            ),
        ).fetchone()
        return kept is not None

    def consume_restock(self, receipt: StockReceipt) -> None:
        row = self._conn.execute(
            """UPDATE expected_restock SET quantity = greatest(0, quantity - %s), updated_at = now()
               WHERE purchase_order_id = %s AND sku = %s RETURNING supplier_id, expected_date""",
            (receipt.quantity, receipt.purchase_order_id, receipt.sku),
        ).fetchone()
        if row is None:
            return  # a purchase order the worker was never told about: nothing to learn
        supplier_id, expected = row
        received_on = receipt.received_at.date()
        self._conn.execute(
            """INSERT INTO supplier_delivery (receipt_id, supplier_id, purchase_order_id, sku, expected_date,
                   received_on, days_late)
               VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            (
                receipt.receipt_id,
                supplier_id,
                receipt.purchase_order_id,
                receipt.sku,
                expected,
                received_on,
                (received_on - expected).days,
            ),
        )

    def expected_supply(self, sku: str) -> list[ExpectedReceipt]:
        rows = self._conn.execute(
            """SELECT purchase_order_id, supplier_id, quantity, expected_date FROM expected_restock
               WHERE sku = %s AND quantity > 0 ORDER BY expected_date, purchase_order_id""",
            (sku,),
        ).fetchall()
        return [ExpectedReceipt(*row) for row in rows]

    def supplier_lateness(self, supplier_ids: Iterable[str]) -> dict[str, list[int]]:
        ids = sorted(set(supplier_ids))
        if not ids:
            return {}
        rows = self._conn.execute(
            """SELECT supplier_id, days_late FROM (
                   SELECT supplier_id, days_late,
                          row_number() OVER (PARTITION BY supplier_id ORDER BY received_on DESC, receipt_id) AS n
                   FROM supplier_delivery WHERE supplier_id = ANY(%s)) AS recent
               WHERE n <= %s""",
            (ids, LATENESS_HISTORY),
        ).fetchall()
        out: dict[str, list[int]] = defaultdict(list)
        for supplier_id, days in rows:
            out[supplier_id].append(days)
        return dict(out)

    def set_expected_dates(self, etas: Mapping[tuple[str, str], Eta]) -> set[str]:
        if not etas:
            return set()
        keys = list(etas)
        rows = self._conn.execute(
            """UPDATE order_line l SET expected_ship_date = f.expected, eta_basis = f.basis
               FROM unnest(%s::text[], %s::text[], %s::date[], %s::text[]) AS f(order_id, line_id, expected, basis)
               WHERE l.order_id = f.order_id AND l.line_id = f.line_id
                 AND (l.expected_ship_date IS DISTINCT FROM f.expected OR l.eta_basis IS DISTINCT FROM f.basis)
               RETURNING l.order_id, l.expected_ship_date IS DISTINCT FROM f.expected""",
            ([k[0] for k in keys], [k[1] for k in keys], [etas[k].date for k in keys], [etas[k].basis for k in keys]),
        ).fetchall()
        return {order_id for order_id, _ in rows}

    def has_expected_dates(self, sku: str) -> bool:
        row = self._conn.execute(
            f"""SELECT EXISTS (SELECT 1 FROM order_line
                               WHERE sku = %s AND status IN {WAITING_SQL} AND expected_ship_date IS NOT NULL)""",
            (sku,),
        ).fetchone()
        return bool(row and row[0])

    def eta_told(self, order_ids: Iterable[str]) -> dict[str, dt.date | None]:
        rows = self._conn.execute(
            "SELECT order_id, eta_told FROM customer_order WHERE order_id = ANY(%s)", (sorted(set(order_ids)),)
        ).fetchall()
        return dict(rows)

    def tell_eta(self, order_id: str, date: dt.date | None) -> None:
        self._conn.execute("UPDATE customer_order SET eta_told = %s WHERE order_id = %s", (date, order_id))

    def all_waiting_lines(self) -> list[OrderLineState]:
        return select_lines(
            self._conn,
            "(l.status = ANY(%s) OR l.quantity_reserved > 0) ORDER BY l.order_id, l.line_id",
            (WAITING_STATUSES,),
        )

    def claim_status_update(self, order_id: str, step: int) -> bool:
        row = self._conn.execute(
            "INSERT INTO status_update (order_id, step) VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            (order_id, step),
        ).fetchone()
        return row is not None

    def lock_sweep(self, wait: bool) -> bool:
        if wait:
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (SWEEP_LOCK,))
            return True
        row = self._conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SWEEP_LOCK,)).fetchone()
        return bool(row and row[0])

    def ship(
        self,
        shipment_id: str,
        order_id: str,
        carrier: str,
        tracking_number: str,
        estimated_delivery: dt.date | None,
        at: dt.datetime,
    ) -> dict[str, int]:
        units = dict(
            self._conn.execute(
                """SELECT line_id, sum(shipped) FROM allocation WHERE shipment_id = %s AND order_id = %s
               GROUP BY line_id HAVING sum(shipped) > 0""",
                (uuid.UUID(shipment_id), order_id),
            ).fetchall()
        )
        if not units:
            return {}
        self._conn.execute(
            """INSERT INTO shipment_dispatch (shipment_id, order_id, carrier, tracking_number, estimated_delivery,
                   dispatched_at) VALUES (%s, %s, %s, %s, %s, %s)""",
            (uuid.UUID(shipment_id), order_id, carrier, tracking_number, estimated_delivery, at),
        )
        self._conn.execute(
            """UPDATE order_line l SET quantity_shipped = l.quantity_shipped + f.units,
                   status = CASE WHEN l.quantity_shipped + f.units
                                      >= l.quantity - l.quantity_rejected - l.quantity_cancelled
                                 THEN 'SHIPPED' ELSE l.status END,
                   shipped_at = CASE WHEN l.quantity_shipped + f.units
                                          >= l.quantity - l.quantity_rejected - l.quantity_cancelled
                                     THEN %s ELSE l.shipped_at END,
                   updated_at = now()
               FROM unnest(%s::text[], %s::int[]) AS f(line_id, units)
               WHERE l.order_id = %s AND l.line_id = f.line_id""",
            (at, list(units), [int(u) for u in units.values()], order_id),
        )
        return {line_id: int(u) for line_id, u in units.items()}

    def emit(self, events: Sequence[OutboundEvent]) -> None:
        rows: list[tuple[str, str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]] = []
        for event in events:
            topic, key, value = self._serialize(event)
            rows.append((event.event_id, topic, key, value, []))
        self._insert_outbox(rows)

    def dead_letter(self, message: InboundMessage, error: RejectedMessage, at: dt.datetime) -> bool:
        error_class, error_message = type(error).__name__, error_text(str(error))
        first_time = self._conn.execute(
            """INSERT INTO dead_letter (source_topic, source_partition, source_offset, error_class,
                   error_message, failed_at)
               VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1""",
            (message.topic, message.partition, message.offset, error_class, error_message, at),
        ).fetchone()
        if first_time is None:
            return False
        key, value, headers = dead_letter_message(message, error_class, error_message, at)
        dead_letter_id = event_id("dead-letter", message.topic, str(message.partition), str(message.offset))
        self._insert_outbox([(dead_letter_id, self._dead_letter_topic, key, value, headers)])
        return True

    def _insert_outbox(
        self, rows: Sequence[tuple[str, str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]]
    ) -> None:
        if not rows:
            return
        with self._conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO outbox (event_id, topic, message_key, message_value, header_names, header_values,
                       source_time)
                   VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING""",
                [
                    (eid, topic, key, value, [name for name, _ in headers], [v for _, v in headers], self._caused_at)
                    for eid, topic, key, value, headers in rows
                ],
            )

    def _require_locked(self, sku: str) -> None:
        if sku not in self._available:
            raise RuntimeError(f"stock of {sku!r} was not locked at the start of the batch")


class PostgresUnitOfWorkFactory:
    def __init__(self, pool: ConnectionPool, serialize: Serializer, dead_letter_topic: str) -> None:
        self._pool = pool
        self._serialize = serialize
        self._dead_letter_topic = dead_letter_topic

    @contextmanager
    def __call__(self, *, rollback: bool = False) -> Iterator[PostgresUnitOfWork]:
        """A unit of work that commits at the end of the block (or, with rollback=True, never does)."""
        with transaction(self._pool, rollback=rollback) as conn:
            yield PostgresUnitOfWork(conn, self._serialize, self._dead_letter_topic)
