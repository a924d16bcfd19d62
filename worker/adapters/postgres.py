"""PostgreSQL: migrations, the unit of work behind a batch, the outbox queries, and state for metrics.

All SQL of the worker lives here and in `worker/migrations/`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from worker.domain.allocation import Fill
from worker.domain.eta import Eta, ExpectedReceipt
from worker.domain.events import OutboundEvent, event_id
from worker.domain.model import (
    WAITING,
    Backorder,
    Cancellation,
    CancelReason,
    CustomerTier,
    LineStatus,
    Order,
    OrderLineState,
    OrderOutcome,
    PaymentTiming,
    ShippingService,
    SplitPreference,
    StockReceipt,
)
from worker.domain.policy import ProductPolicy
from worker.service.messages import InboundMessage, RejectedMessage, UnprocessableEvent
from worker.service.ports import Decision, Seen, StoreConflict, StoreUnavailable

Serializer = Callable[[OutboundEvent], tuple[str, bytes, bytes]]

# Keys for pg_advisory locks; any fixed numbers do, as long as nothing else uses them.
MIGRATION_LOCK = 7_310_001
RELAY_LOCK = 7_310_002
SWEEP_LOCK = 7_310_003
ORDER_LOCK_CLASS = 7310  # pg_advisory_xact_lock(ORDER_LOCK_CLASS, hashtext(order_id)) serialises an order's events
LATENESS_HISTORY = 10  # a supplier's margin is learned from its last this-many receipts

_WAITING = sorted(str(s) for s in WAITING)
# The same list written into the SQL text: a parameter (`status = ANY($1)`) hides it from the planner,
# which then cannot use the partial index of waiting lines once a statement is prepared (generic plan).
_WAITING_SQL = "(" + ", ".join(f"'{status}'" for status in _WAITING) + ")"
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
# SQLSTATE classes of errors that the data of a statement caused: a value out of range or too long
# (22), a constraint it breaks (23), a program limit it reaches, such as an index row too large (54).
# Those are a message's fault. Every other error (no connection, shutting down, out of resources, a
# missing table or privilege, a deadlock, an internal error) is the database's: retried, never blamed on
# the message, so an outage or a broken deployment cannot dead-letter valid events.
_DATA_CLASSES = ("22", "23", "54")
_CONFLICT_CLASS = "40"  # a deadlock or serialization failure: retrying the transaction at once succeeds


def is_unavailable(exc: BaseException) -> bool:
    """True when the database failed for reasons of its own (retry later); False when the data caused it."""
    if isinstance(exc, PoolTimeout | psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:  # raised by the client: a lost connection, or a value it refused to send (NUL)
        return isinstance(exc, psycopg.OperationalError)
    return state[:2] not in _DATA_CLASSES


def _unavailable(exc: psycopg.Error) -> StoreUnavailable:
    text = f"{type(exc).__name__}: {exc}"
    return StoreConflict(text) if (exc.sqlstate or "")[:2] == _CONFLICT_CLASS else StoreUnavailable(text)


# A server that vanishes without closing its connections (a network partition, a host lost) must not
# hang a statement for the kernel's default of hours: libpq's TCP keepalives and user timeout turn it
# into a connection error within about 30 s, which the worker treats as the database being down.
CONNECTION_OPTIONS: dict[str, int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def with_timeouts(conninfo: str) -> str:
    """The connection string with CONNECTION_OPTIONS added where it does not set them itself."""
    return make_conninfo("", **{**CONNECTION_OPTIONS, **conninfo_to_dict(conninfo)})


def open_pool(conninfo: str, min_size: int, max_size: int, name: str = "backorder-worker") -> ConnectionPool:
    """An opened pool. It does not wait for the database: a worker starts and retries while it is down."""
    pool = ConnectionPool(
        with_timeouts(conninfo),
        min_size=min_size,
        max_size=max_size,
        open=False,
        name=name,
        timeout=10.0,
        kwargs={"autocommit": True, "application_name": name},
        check=ConnectionPool.check_connection,  # a connection that died with the server is replaced
    )
    pool.open(wait=False)
    return pool


# ------------------------------------------------------------------------------------------ migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("worker").joinpath("migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def _applied(conn: psycopg.Connection[Any]) -> set[int]:
    conn.execute("""
        CREATE TABLE IF NOT EXISTS schema_migration (
            version     integer PRIMARY KEY,
            name        text NOT NULL,
            applied_at  timestamptz NOT NULL DEFAULT now()
        )""")
    return {row[0] for row in conn.execute("SELECT version FROM schema_migration")}


def migrate(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Apply the migrations not applied yet, each in its own transaction; safe to run concurrently."""
    done: list[Migration] = []
    for migration in available_migrations():
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            if migration.version in _applied(conn):
                continue
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migration (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            done.append(migration)
    return done


def pending_migrations(conn: psycopg.Connection[Any]) -> list[Migration]:
    with conn.transaction():
        applied = _applied(conn)
    return [m for m in available_migrations() if m.version not in applied]


# ------------------------------------------------------------------------------------------ unit of work


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
                raise _unavailable(exc) from exc
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
        return self._lines("l.order_id = ANY(%s) ORDER BY l.order_id, l.line_id", (ids,))

    def waiting_lines(self, sku: str) -> Sequence[Backorder]:
        lines = self._lines(f"l.sku = %s AND l.status IN {_WAITING_SQL}", (sku,))
        return [line.as_backorder() for line in lines]

    def _lines(self, where: str, params: tuple[Any, ...]) -> list[OrderLineState]:
        rows = self._conn.execute(
            f"""SELECT l.order_id, l.line_id, l.sku, l.product_name, o.customer_id, o.customer_tier,
                       o.shipping_service, o.need_by, o.order_units, l.split, l.placed_at, l.unit_price_minor,
                       l.quantity, l.quantity_allocated, l.quantity_reserved, l.quantity_rejected,
                       l.quantity_cancelled, l.status, l.status_reason, l.expected_ship_date, l.quantity_shipped
                FROM order_line l JOIN customer_order o USING (order_id)
                WHERE {where}""",
            params,
        ).fetchall()
        return [
            OrderLineState(
                order_id=r[0],
                line_id=r[1],
                sku=r[2],
                product_name=r[3],
                customer_id=r[4],
                customer_tier=CustomerTier(r[5]),
                shipping_service=ShippingService(r[6]),
                need_by=r[7],
                order_units=r[8],
                split=SplitPreference(r[9]),
                placed_at=r[10],
                unit_price_minor=r[11],
                ordered=r[12],
                allocated=r[13],
                reserved=r[14],
                rejected=r[15],
                cancelled=r[16],
                status=LineStatus(r[17]),
                reason=r[18],
                expected_ship_date=r[19],
                shipped=r[20],
            )
            for r in rows
        ]

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
                _WAITING,
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
                               WHERE sku = %s AND status IN {_WAITING_SQL} AND expected_ship_date IS NOT NULL)""",
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
        return self._lines(
            "(l.status = ANY(%s) OR l.quantity_reserved > 0) ORDER BY l.order_id, l.line_id", (_WAITING,)
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


ERROR_TEXT_MAX_BYTES = 1024  # what a dead letter's error message keeps (it may echo the input)
DEAD_LETTER_MAX_BYTES = 900_000  # key + value + headers a dead letter may carry; the producer sends up to 1,000,000


def error_text(text: str) -> str:
    """`text` safe for a text column and a header: no NUL, no lone surrogate, at most ERROR_TEXT_MAX_BYTES."""
    encoded = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace")
    if len(encoded) <= ERROR_TEXT_MAX_BYTES:
        return encoded.decode()
    marker = f"... ({len(encoded)} bytes)".encode()
    return encoded[: ERROR_TEXT_MAX_BYTES - len(marker)].decode("utf-8", "ignore") + marker.decode()


def _header_name(name: str) -> str:
    return name.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()


def dead_letter_message(
    message: InboundMessage, error_class: str, error_message: str, at: dt.datetime
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The dead letter of `message`: key, value and headers as the contract describes them.

    The worker's `dlq.*` headers are the only ones of that name: a producer's own are renamed
    `original.dlq.*`. What would not fit in one Kafka message (DEAD_LETTER_MAX_BYTES) is left out, the
    larger of value and original headers first, then the other, then the key, each replaced by a header
    saying so.
    """
    original = [
        (f"original.{name}" if name.startswith("dlq.") else name, value)
        for name, value in ((_header_name(n), v) for n, v in message.headers)
    ]
    ours = [
        ("dlq.original.topic", message.topic.encode()),
        ("dlq.original.partition", str(message.partition).encode()),
        ("dlq.original.offset", str(message.offset).encode()),
        ("dlq.error.class", error_class.encode()),
        ("dlq.error.message", error_message.encode()),
        ("dlq.failed_at", at.isoformat().encode()),
    ]
    key, value = message.key, message.value

    def size() -> int:
        return len(key or b"") + len(value or b"") + sum(len(n) + len(v) for n, v in original + ours)

    def omit_value() -> None:
        nonlocal value
        if value is not None and size() > DEAD_LETTER_MAX_BYTES:
            ours.extend(
                [
                    ("dlq.value.omitted.bytes", str(len(value)).encode()),
                    ("dlq.value.sha256", hashlib.sha256(value).hexdigest().encode()),
                ]
            )
            value = None

    def omit_headers() -> None:
        nonlocal original
        if original and size() > DEAD_LETTER_MAX_BYTES:
            ours.append(("dlq.headers.omitted.bytes", str(sum(len(n) + len(v) for n, v in original)).encode()))
            original = []

    # The larger of the two goes first, so that what is kept is as much of the original as fits.
    larger_first = (omit_value, omit_headers)
    if len(value or b"") < sum(len(n) + len(v) for n, v in original):
        larger_first = (omit_headers, omit_value)
    for omit in larger_first:
        omit()
    if key is not None and size() > DEAD_LETTER_MAX_BYTES:
        ours.append(("dlq.key.omitted.bytes", str(len(key)).encode()))
        key = None
    return key, value, original + ours


class PostgresUnitOfWorkFactory:
    def __init__(self, pool: ConnectionPool, serialize: Serializer, dead_letter_topic: str) -> None:
        self._pool = pool
        self._serialize = serialize
        self._dead_letter_topic = dead_letter_topic

    @contextmanager
    def __call__(self, *, rollback: bool = False) -> Iterator[PostgresUnitOfWork]:
        """A unit of work that commits at the end of the block (or, with rollback=True, never does)."""
        try:
            with self._pool.connection() as conn, conn.transaction(force_rollback=rollback):
                yield PostgresUnitOfWork(conn, self._serialize, self._dead_letter_topic)
        except psycopg.Error as exc:
            if is_unavailable(exc):
                raise _unavailable(exc) from exc
            raise


# --------------------------------------------------------------------------------------------- outbox


@dataclass(frozen=True)
class OutboxRow:
    outbox_id: int
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    created_at: dt.datetime
    source_time: dt.datetime | None


def try_lock_relay(conn: psycopg.Connection[Any]) -> bool:
    """Only one relay in the group publishes at a time, which keeps each key's events in order."""
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (RELAY_LOCK,)).fetchone()
    return bool(row and row[0])


def unpublished(conn: psycopg.Connection[Any], limit: int, max_bytes: int) -> list[OutboxRow]:
    """The oldest rows to publish: at most `limit`, and only while the keys and values before a row add up
    to less than `max_bytes` (so the row that crosses it comes too, and a round always has one row)."""
    rows = conn.execute(
        """SELECT outbox_id, topic, message_key, message_value, header_names, header_values, created_at, source_time
           FROM (SELECT page.*,
                        coalesce(sum(coalesce(octet_length(message_key), 0) + coalesce(octet_length(message_value), 0))
                                 OVER (ORDER BY outbox_id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                          AS bytes_before
                 FROM (SELECT outbox_id, topic, message_key, message_value, header_names, header_values, created_at,
                              source_time
                       FROM outbox WHERE published_at IS NULL AND failed_at IS NULL
                       ORDER BY outbox_id LIMIT %s) AS page) AS budgeted
           WHERE bytes_before < %s ORDER BY outbox_id""",
        (limit, max_bytes),
    ).fetchall()
    return [
        OutboxRow(
            r[0], r[1], _bytes(r[2]), _bytes(r[3]), [(n, bytes(v)) for n, v in zip(r[4], r[5], strict=True)], r[6], r[7]
        )
        for r in rows
    ]


def mark_published(conn: psycopg.Connection[Any], outbox_ids: Sequence[int]) -> None:
    if outbox_ids:
        conn.execute("UPDATE outbox SET published_at = now() WHERE outbox_id = ANY(%s)", (list(outbox_ids),))


def park(conn: psycopg.Connection[Any], refused: Mapping[int, str]) -> None:
    """Rows Kafka refused for good (outbox id -> why): never retried, kept for an operator to look at."""
    if refused:
        conn.execute(
            """UPDATE outbox SET failed_at = now(), last_error = f.error
               FROM unnest(%s::bigint[], %s::text[]) AS f(outbox_id, error) WHERE outbox.outbox_id = f.outbox_id""",
            (list(refused), [error_text(e) for e in refused.values()]),
        )


@dataclass(frozen=True)
class Retention:
    """How long what the worker keeps only for a while is kept (see the README's retention table)."""

    published_outbox: dt.timedelta
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
        "published_outbox": (
            """DELETE FROM outbox WHERE outbox_id IN (SELECT outbox_id FROM outbox
                   WHERE published_at < now() - %(age)s LIMIT %(chunk)s)""",
            retention.published_outbox,
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


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


# ---------------------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class StateFigures:
    outbox_backlog: int
    outbox_parked: int
    outbox_oldest_age_seconds: float
    open_backorder_lines: int
    open_backorder_units: int
    units_received: int
    units_allocated: int
    units_reserved: int
    units_rejected: int
    cancelled_lines_by_reason: dict[str, int]
    orders_by_outcome: dict[str, int]
    backordered_lines: int
    open_backorder_orders: int
    open_value_minor_by_currency: dict[str, int]
    oldest_open_age_seconds: float
    open_lines_expected_within_7_days: int
    fill_to_allocation: Histogram
    fill_to_shipment: Histogram


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts at each bucket's upper bound (seconds), the sum and the count."""

    buckets: list[tuple[float, int]]
    total_seconds: float
    count: int


FILL_BUCKETS_SECONDS = tuple(
    float(h * 3600) for h in (1, 6, 12, 24, 48, 72, 120, 168, 240, 336, 504, 720, 1080, 1440)
)  # an hour to 60 days


def _histogram(conn: psycopg.Connection[Any], seconds_sql: str) -> Histogram:
    """A histogram of `seconds_sql` (an expression over order_line of backordered lines) in one query."""
    filters = ", ".join(f"count(*) FILTER (WHERE d <= {bound})" for bound in FILL_BUCKETS_SECONDS)
    row = conn.execute(
        f"""SELECT {filters}, coalesce(sum(d), 0), count(*)
            FROM (SELECT {seconds_sql} AS d FROM order_line WHERE backordered) AS durations
            WHERE d IS NOT NULL"""
    ).fetchone()
    assert row is not None
    n = len(FILL_BUCKETS_SECONDS)
    return Histogram(
        list(zip(FILL_BUCKETS_SECONDS, (int(c) for c in row[:n]), strict=True)), float(row[n]), int(row[n + 1])
    )


def state_figures(conn: psycopg.Connection[Any]) -> StateFigures:
    outbox = conn.execute(
        """SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0),
                  (SELECT count(*) FROM outbox WHERE failed_at IS NOT NULL)
           FROM outbox WHERE published_at IS NULL AND failed_at IS NULL"""
    ).fetchone()
    lines = conn.execute(
        """SELECT count(*) FILTER (WHERE status = ANY(%(waiting)s)),
                  coalesce(sum(quantity - quantity_allocated - quantity_reserved - quantity_rejected
                               - quantity_cancelled) FILTER (WHERE status = ANY(%(waiting)s)), 0),
                  coalesce(sum(quantity_allocated), 0), coalesce(sum(quantity_reserved), 0),
                  coalesce(sum(quantity_rejected), 0),
                  (SELECT coalesce(sum(received_total), 0) FROM stock_level)
           FROM order_line""",
        {"waiting": _WAITING},
    ).fetchone()
    cancelled = conn.execute(
        "SELECT cancel_reason, count(*) FROM order_line WHERE cancel_reason IS NOT NULL GROUP BY cancel_reason"
    ).fetchall()
    [backordered_lines] = conn.execute("SELECT count(*) FROM order_line WHERE backordered").fetchone() or (0,)
    outcomes = conn.execute(
        "SELECT outcome, count(*) FROM customer_order WHERE outcome IS NOT NULL GROUP BY outcome"
    ).fetchall()
    backlog = conn.execute(
        """SELECT count(DISTINCT l.order_id), coalesce(extract(epoch FROM now() - min(l.placed_at)), 0),
                  count(*) FILTER (WHERE l.expected_ship_date <= current_date + 7)
           FROM order_line l WHERE l.status = ANY(%s)""",
        (_WAITING,),
    ).fetchone()
    values = conn.execute(
        """SELECT o.currency, sum((l.quantity - l.quantity_allocated - l.quantity_reserved - l.quantity_rejected
                                   - l.quantity_cancelled)::numeric * l.unit_price_minor)
           FROM order_line l JOIN customer_order o USING (order_id)
           WHERE l.status = ANY(%s) GROUP BY o.currency""",
        (_WAITING,),
    ).fetchall()
    assert backlog is not None
    assert outbox is not None and lines is not None
    return StateFigures(
        outbox_backlog=int(outbox[0]),
        outbox_parked=int(outbox[2]),
        outbox_oldest_age_seconds=float(outbox[1]),
        open_backorder_lines=int(lines[0]),
        open_backorder_units=int(lines[1]),
        units_allocated=int(lines[2]),
        units_reserved=int(lines[3]),
        units_rejected=int(lines[4]),
        units_received=int(lines[5]),
        cancelled_lines_by_reason={reason: int(count) for reason, count in cancelled},
        orders_by_outcome={outcome: int(count) for outcome, count in outcomes},
        backordered_lines=int(backordered_lines),
        open_backorder_orders=int(backlog[0]),
        oldest_open_age_seconds=float(backlog[1]),
        open_lines_expected_within_7_days=int(backlog[2]),
        open_value_minor_by_currency={currency: int(value) for currency, value in values},
        fill_to_allocation=_histogram(conn, "extract(epoch FROM filled_at - placed_at)"),
        fill_to_shipment=_histogram(conn, "extract(epoch FROM shipped_at - placed_at)"),
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


@dataclass(frozen=True)
class SkuBacklog:
    sku: str
    orders: int
    lines: int
    units: int
    value_minor: int
    currency: str
    oldest_days: int
    available: int
    next_restock: dt.date | None
    next_restock_units: int


def sku_backlog(conn: psycopg.Connection[Any]) -> list[SkuBacklog]:
    """The open backlog per SKU (and currency), largest value first."""
    rows = conn.execute(
        """SELECT l.sku, count(DISTINCT l.order_id), count(*),
                  sum(l.quantity - l.quantity_allocated - l.quantity_reserved - l.quantity_rejected
                      - l.quantity_cancelled),
                  sum((l.quantity - l.quantity_allocated - l.quantity_reserved - l.quantity_rejected
                       - l.quantity_cancelled)::numeric * l.unit_price_minor),
                  o.currency, extract(day FROM now() - min(l.placed_at))::int,
                  coalesce(max(s.available), 0),
                  (SELECT min(expected_date) FROM expected_restock r WHERE r.sku = l.sku AND r.quantity > 0),
                  (SELECT coalesce(sum(quantity), 0) FROM expected_restock r WHERE r.sku = l.sku AND r.quantity > 0)
           FROM order_line l JOIN customer_order o USING (order_id) LEFT JOIN stock_level s ON s.sku = l.sku
           WHERE l.status = ANY(%s)
           GROUP BY l.sku, o.currency ORDER BY 5 DESC, 1""",
        (_WAITING,),
    ).fetchall()
    return [
        SkuBacklog(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]), r[5], int(r[6]), int(r[7]), r[8], int(r[9]))
        for r in rows
    ]


def cancelled_backorders(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(lines that waited for stock, of them cancelled): the cancel rate."""
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE quantity_cancelled > 0) FROM order_line WHERE backordered"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
