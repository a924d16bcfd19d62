"""PostgreSQL: migrations, the unit of work behind a batch, the outbox queries, and state for metrics.

All SQL of the worker lives here and in `worker/migrations/`.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from worker.domain.events import OutboundEvent, event_id
from worker.domain.model import WAITING, Backorder, Fill, LineStatus, Order, ShippingService, StockReceipt
from worker.service.messages import InboundMessage, RejectedMessage, UnprocessableEvent
from worker.service.ports import Seen, StoreUnavailable

Serializer = Callable[[OutboundEvent], tuple[str, bytes, bytes]]

# Keys for pg_advisory locks; any fixed numbers do, as long as nothing else uses them.
MIGRATION_LOCK = 7_310_001
RELAY_LOCK = 7_310_002

_WAITING = sorted(str(s) for s in WAITING)
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


def open_pool(conninfo: str, min_size: int, max_size: int, name: str = "backorder-worker") -> ConnectionPool:
    """An opened pool. It does not wait for the database: a worker starts and retries while it is down."""
    pool = ConnectionPool(
        conninfo,
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
        before = dict(self._available)
        try:
            with self._conn.transaction():
                yield
        except UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc
        except psycopg.Error as exc:
            self._available = before
            raise UnprocessableEvent(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._available = before
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

    def add_order(self, order: Order, event_id: str) -> None:
        self._conn.execute(
            """INSERT INTO customer_order (order_id, customer_id, customer_tier, shipping_service, need_by,
                   split_preference, currency, placed_at, event_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
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
            ),
        )
        with self._conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO order_line (order_id, line_id, sku, product_name, quantity, unit_price_minor,
                       status, placed_at, updated_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())""",
                [
                    (
                        order.order_id,
                        line.line_id,
                        line.sku,
                        line.product_name,
                        line.quantity,
                        line.unit_price_minor,
                        LineStatus.BACKORDERED,
                        order.placed_at,
                    )
                    for line in order.lines
                ],
            )

    def add_receipt(self, receipt: StockReceipt, event_id: str) -> None:
        self._require_locked(receipt.sku)
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
        row = self._conn.execute(
            """UPDATE stock_level SET available = available + %(q)s, received_total = received_total + %(q)s,
                   updated_at = now()
               WHERE sku = %(sku)s RETURNING available""",
            {"q": receipt.quantity, "sku": receipt.sku},
        ).fetchone()
        assert row is not None
        self._available[receipt.sku] = row[0]

    def available(self, sku: str) -> int:
        self._require_locked(sku)
        return self._available[sku]

    def waiting_lines(self, sku: str) -> Sequence[Backorder]:
        rows = self._conn.execute(
            """SELECT l.order_id, l.line_id, l.sku, l.product_name, o.customer_id, o.shipping_service,
                      l.placed_at, l.quantity, l.quantity_allocated
               FROM order_line l JOIN customer_order o USING (order_id)
               WHERE l.sku = %s AND l.status = ANY(%s)
               ORDER BY l.placed_at, l.order_id, l.line_id""",
            (sku, _WAITING),
        ).fetchall()
        return [
            Backorder(
                order_id=r[0],
                line_id=r[1],
                sku=r[2],
                product_name=r[3],
                customer_id=r[4],
                shipping_service=ShippingService(r[5]),
                placed_at=r[6],
                quantity=r[7],
                allocated=r[8],
            )
            for r in rows
        ]

    def record_fills(
        self, sku: str, fills: Sequence[Fill], shipment_ids: Mapping[str, str], cause: str, at: dt.datetime
    ) -> None:
        self._require_locked(sku)
        order_ids = [f.backorder.order_id for f in fills]
        line_ids = [f.backorder.line_id for f in fills]
        self._conn.execute(
            """UPDATE order_line l SET quantity_allocated = f.allocated, status = f.status, updated_at = %s
               FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[]) AS f(order_id, line_id, allocated, status)
               WHERE l.order_id = f.order_id AND l.line_id = f.line_id""",
            (
                at,
                order_ids,
                line_ids,
                [f.allocated_after for f in fills],
                [str(f.status_after) for f in fills],
            ),
        )
        self._conn.execute(
            """INSERT INTO allocation (order_id, line_id, sku, quantity, shipment_id, cause, allocated_at)
               SELECT f.order_id, f.line_id, %s, f.quantity, f.shipment_id, %s, %s
               FROM unnest(%s::text[], %s::text[], %s::int[], %s::uuid[])
                    AS f(order_id, line_id, quantity, shipment_id)""",
            (
                sku,
                cause,
                at,
                order_ids,
                line_ids,
                [f.quantity for f in fills],
                [uuid.UUID(shipment_ids[o]) for o in order_ids],
            ),
        )
        units = sum(f.quantity for f in fills)
        row = self._conn.execute(
            """UPDATE stock_level SET available = available - %(u)s, allocated_total = allocated_total + %(u)s,
                   updated_at = now()
               WHERE sku = %(sku)s RETURNING available""",
            {"u": units, "sku": sku},
        ).fetchone()
        assert row is not None
        self._available[sku] = row[0]

    def open_units(self, order_ids: Iterable[str]) -> dict[str, int]:
        ids = sorted(set(order_ids))
        if not ids:
            return {}
        rows = self._conn.execute(
            """SELECT order_id, coalesce(sum(quantity - quantity_allocated) FILTER (WHERE status = ANY(%s)), 0)
               FROM order_line WHERE order_id = ANY(%s) GROUP BY order_id""",
            (_WAITING, ids),
        ).fetchall()
        return {order_id: int(units) for order_id, units in rows}

    def emit(self, events: Sequence[OutboundEvent]) -> None:
        rows: list[tuple[str, str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]] = []
        for event in events:
            topic, key, value = self._serialize(event)
            rows.append((event.event_id, topic, key, value, []))
        self._insert_outbox(rows)

    def dead_letter(self, message: InboundMessage, error: RejectedMessage, at: dt.datetime) -> bool:
        error_class, error_message = type(error).__name__, str(error)
        first_time = self._conn.execute(
            """INSERT INTO dead_letter (source_topic, source_partition, source_offset, error_class,
                   error_message, failed_at)
               VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1""",
            (message.topic, message.partition, message.offset, error_class, error_message, at),
        ).fetchone()
        if first_time is None:
            return False
        headers = [
            *message.headers,
            ("dlq.original.topic", message.topic.encode()),
            ("dlq.original.partition", str(message.partition).encode()),
            ("dlq.original.offset", str(message.offset).encode()),
            ("dlq.error.class", error_class.encode()),
            ("dlq.error.message", error_message.encode()),
            ("dlq.failed_at", at.isoformat().encode()),
        ]
        dead_letter_id = event_id("dead-letter", message.topic, str(message.partition), str(message.offset))
        self._insert_outbox([(dead_letter_id, self._dead_letter_topic, message.key, message.value, headers)])
        return True

    def _insert_outbox(
        self, rows: Sequence[tuple[str, str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]]
    ) -> None:
        if not rows:
            return
        with self._conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO outbox (event_id, topic, message_key, message_value, header_names, header_values)
                   VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING""",
                [
                    (eid, topic, key, value, [name for name, _ in headers], [v for _, v in headers])
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
    def __call__(self) -> Iterator[PostgresUnitOfWork]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield PostgresUnitOfWork(conn, self._serialize, self._dead_letter_topic)
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------------------------- outbox


@dataclass(frozen=True)
class OutboxRow:
    outbox_id: int
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def try_lock_relay(conn: psycopg.Connection[Any]) -> bool:
    """Only one relay in the group publishes at a time, which keeps each key's events in order."""
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (RELAY_LOCK,)).fetchone()
    return bool(row and row[0])


def unpublished(conn: psycopg.Connection[Any], limit: int) -> list[OutboxRow]:
    rows = conn.execute(
        """SELECT outbox_id, topic, message_key, message_value, header_names, header_values
           FROM outbox WHERE published_at IS NULL ORDER BY outbox_id LIMIT %s""",
        (limit,),
    ).fetchall()
    return [
        OutboxRow(r[0], r[1], _bytes(r[2]), _bytes(r[3]), [(n, bytes(v)) for n, v in zip(r[4], r[5], strict=True)])
        for r in rows
    ]


def mark_published(conn: psycopg.Connection[Any], outbox_ids: Sequence[int]) -> None:
    if outbox_ids:
        conn.execute("UPDATE outbox SET published_at = now() WHERE outbox_id = ANY(%s)", (list(outbox_ids),))


def purge_published(conn: psycopg.Connection[Any], older_than: dt.timedelta) -> int:
    cur = conn.execute("DELETE FROM outbox WHERE published_at < now() - %s", (older_than,))
    return cur.rowcount


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


# ---------------------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class StateFigures:
    outbox_backlog: int
    outbox_oldest_age_seconds: float
    open_backorder_lines: int
    open_backorder_units: int
    units_received: int
    units_allocated: int


def state_figures(conn: psycopg.Connection[Any]) -> StateFigures:
    row = conn.execute(
        """SELECT
             (SELECT count(*) FROM outbox WHERE published_at IS NULL),
             (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)
                FROM outbox WHERE published_at IS NULL),
             count(*), coalesce(sum(quantity - quantity_allocated), 0),
             (SELECT coalesce(sum(received_total), 0) FROM stock_level),
             (SELECT coalesce(sum(allocated_total), 0) FROM stock_level)
           FROM order_line WHERE status = ANY(%s)""",
        (_WAITING,),
    ).fetchone()
    assert row is not None
    return StateFigures(int(row[0]), float(row[1]), int(row[2]), int(row[3]), int(row[4]), int(row[5]))
