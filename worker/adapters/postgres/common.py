"""What the PostgreSQL modules share: connections that give up on a vanished server, the pool, how an
error is told apart (the database's or the data's), the advisory lock keys, and the lines of an order."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from sys import intern
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from worker.domain.model import (
    LINE_FIELDS,
    WAITING,
    CancelReason,
    CustomerTier,
    LineStatus,
    OrderLineState,
    PaymentTiming,
    ShippingService,
    SplitPreference,
)
from worker.domain.policy import ProductPolicy
from worker.service.ports import KeptPolicy, StoreConflict, StoreUnavailable

# Keys for pg_advisory locks; any fixed numbers do, as long as nothing else uses them.
MIGRATION_LOCK = 7_310_001
RELAY_LOCK = 7_310_002
SWEEP_LOCK = 7_310_003
ORDER_LOCK_CLASS = 7310  # pg_advisory_xact_lock(ORDER_LOCK_CLASS, hashtext(order_id)) serialises an order's events


WAITING_STATUSES = sorted(str(s) for s in WAITING)
# The same list written into the SQL text: a parameter (`status = ANY($1)`) hides it from the planner,
# which then cannot use the partial index of waiting lines once a statement is prepared (generic plan).
WAITING_SQL = "(" + ", ".join(f"'{status}'" for status in WAITING_STATUSES) + ")"
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


def store_error(exc: psycopg.Error) -> StoreUnavailable:
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


def open_pool(
    conninfo: str,
    min_size: int,
    max_size: int,
    name: str = "backorder-worker",
    *,
    timeout: float = 10.0,
    options: str | None = None,
) -> ConnectionPool:
    """An opened pool. It does not wait for the database: a worker starts and retries while it is down.
    `timeout`: how long a connection is waited for; `options`: libpq options of every connection."""
    kwargs: dict[str, Any] = {"autocommit": True, "application_name": name}
    if options is not None:
        kwargs["options"] = options
    pool = ConnectionPool(
        with_timeouts(conninfo),
        min_size=min_size,
        max_size=max_size,
        open=False,
        name=name,
        timeout=timeout,
        kwargs=kwargs,
        check=ConnectionPool.check_connection,  # a connection that died with the server is replaced
    )
    pool.open(wait=False)
    return pool


@contextmanager
def transaction(pool: ConnectionPool, *, rollback: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the pool inside one transaction that commits at the end of the block (or, with
    rollback=True, never does); the database's own failures come out as StoreUnavailable."""
    try:
        with pool.connection() as conn, conn.transaction(force_rollback=rollback):
            yield conn
    except psycopg.Error as exc:
        if is_unavailable(exc):
            raise store_error(exc) from exc
        raise


def select_lines(
    conn: psycopg.Connection[Any], where: str, params: tuple[Any, ...], *, prepare: bool | None = None
) -> list[OrderLineState]:
    """Order lines with what the rules need of their order, filtered by `where` (over `l` and `o`);
    `prepare=False`: planned for its parameters at every call (psycopg's `prepare`)."""
    return lines_from(conn.execute(lines_query(where), params, prepare=prepare).fetchall())


# Each field of OrderLineState in its order, and the column it is read from: `lines_from` makes a line of its row
# by position (a line by 26 keywords took 5.5 us, by position 3.0: a deep receipt reads 100,000 lines twice).
_LINE_COLUMNS = (
    ("order_id", "l.order_id"),
    ("line_id", "l.line_id"),
    ("sku", "l.sku"),
    ("product_name", "l.product_name"),
    ("customer_id", "o.customer_id"),
    ("customer_tier", "o.customer_tier"),
    ("shipping_service", "o.shipping_service"),
    ("need_by", "o.need_by"),
    ("order_units", "o.order_units"),
    ("split", "l.split"),
    ("placed_at", "l.placed_at"),
    ("unit_price_minor", "l.unit_price_minor"),
    ("ordered", "l.quantity"),
    ("allocated", "l.quantity_allocated"),
    ("reserved", "l.quantity_reserved"),
    ("rejected", "l.quantity_rejected"),
    ("cancelled", "l.quantity_cancelled"),
    ("status", "l.status"),
    ("reason", "l.status_reason"),
    ("expected_ship_date", "l.expected_ship_date"),
    ("shipped", "l.quantity_shipped"),
    ("cancel_reason", "l.cancel_reason"),
    ("eta_basis", "l.eta_basis"),
    ("backordered", "l.backordered"),
    ("filled_at", "l.filled_at"),
    ("shipped_at", "l.shipped_at"),
)
if tuple(name for name, _ in _LINE_COLUMNS) != LINE_FIELDS:
    raise TypeError("_LINE_COLUMNS must name OrderLineState's fields in their order")
_SELECT_LINES = ", ".join(column for _, column in _LINE_COLUMNS)
# The enums' members by value: a dict lookup, not an Enum call (0.5 us), for five columns of every line read.
_TIERS = {m.value: m for m in CustomerTier}
_SERVICES = {m.value: m for m in ShippingService}
_SPLITS = {m.value: m for m in SplitPreference}
_STATUSES = {m.value: m for m in LineStatus}
_CANCEL_REASONS: dict[str | None, CancelReason | None] = {None: None, **{m.value: m for m in CancelReason}}


def lines_query(where: str) -> str:
    """The query of `select_lines`, for a pipeline that fetches its rows later (`lines_from`)."""
    return f"""SELECT {_SELECT_LINES}
               FROM order_line l JOIN customer_order o USING (order_id)
               WHERE {where}"""


def lines_from(rows: Iterable[tuple[Any, ...]]) -> list[OrderLineState]:
    # The text a queue's lines repeat (the SKU, its name, line and customer ids) is kept once: a line is 20%
    # smaller with it, and a receipt into a deep queue holds every line of the queue at once.
    # fmt: off
    return [
        OrderLineState(
            r[0], intern(r[1]), intern(r[2]), intern(r[3]), intern(r[4]), _TIERS[r[5]], _SERVICES[r[6]], r[7], r[8],
            _SPLITS[r[9]], r[10], r[11], r[12], r[13], r[14], r[15], r[16], _STATUSES[r[17]], r[18], r[19], r[20],
            _CANCEL_REASONS[r[21]], r[22], r[23], r[24], r[25],
        )
        for r in rows
    ]
    # fmt: on


# The SKUs' own product policies: read by the unit of work with a batch's loads, and by the read side's queue view.
POLICIES_QUERY = """SELECT sku, backorders_allowed, discontinued, max_backorder_qty_per_customer, payment_timing,
                            default_split, lead_time_days, stale_after_days, decided_at, event_id, available_from,
                            max_promise_days
                     FROM product_policy WHERE sku = ANY(%b)"""


def policies_from(rows: list[tuple[Any, ...]]) -> list[KeptPolicy]:
    return [
        KeptPolicy(
            r[0],
            ProductPolicy(
                backorders_allowed=r[1],
                discontinued=r[2],
                max_backorder_qty_per_customer=r[3],
                payment_timing=PaymentTiming(r[4]),
                default_split=SplitPreference(r[5]),
                lead_time_days=r[6],
                stale_after_days=r[7],
                available_from=r[10],
                max_promise_days=r[11],
            ),
            r[8],
            r[9],
        )
        for r in rows
    ]
