"""The write side: the store a batch's unit of work (`worker.service.book.Book`) loads from and saves to,
on one PostgreSQL transaction.

Every method is one statement over a set (the lines of many orders, the stock of many SKUs); `save`
writes everything a transaction changed in one pipeline of set-based statements (`INSERT ... SELECT
FROM unnest(...)`, `UPDATE ... FROM unnest(...)`), whatever the number of events in the batch. No
rules here: the rows come in their final state.

Every list is sent as a binary parameter (`%b`). psycopg's array dumpers loop in Python, and its text one also
quotes each element: a line's row of 22 columns took about 22 us to dump as text arrays, 5 us in binary.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import itertools
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import psycopg
import psycopg.copy
from psycopg.abc import PQGen
from psycopg.generators import fetch_many, send
from psycopg.pq.abc import PGresult
from psycopg.waiting import Wait
from psycopg_pool import ConnectionPool

from worker.adapters.postgres import totals
from worker.adapters.postgres.common import (
    ORDER_LOCK_CLASS,
    POLICIES_QUERY,
    SWEEP_LOCK,
    WAITING_SQL,
    is_unavailable,
    lines_from,
    lines_query,
    policies_from,
    select_lines,
    store_error,
    transaction,
)
from worker.adapters.postgres.outbox import dead_letter_message, error_text
from worker.domain.eta import ExpectedReceipt
from worker.domain.events import OutboundEvent, event_id
from worker.domain.model import Cancellation, CancelReason, OrderLineState
from worker.service.book import Book
from worker.service.messages import InboundMessage, RejectedMessage
from worker.service.ports import (
    Changes,
    Delivery,
    Fact,
    KeptPolicy,
    KeptRestock,
    Loaded,
    PendingCancellation,
    PlanStep,
    StoreRefused,
    Wanted,
)

Serializer = Callable[[OutboundEvent], tuple[str, bytes, bytes]]

P = ParamSpec("P")
R = TypeVar("R")


def _judged(method: Callable[P, R]) -> Callable[P, R]:
    """The database's own failures come out as StoreUnavailable; a statement it refused as StoreRefused."""

    @functools.wraps(method)
    def judged(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except psycopg.Error as exc:
            if is_unavailable(exc):
                raise store_error(exc) from exc
            raise StoreRefused(f"{type(exc).__name__}: {exc}") from exc

    return judged


class PostgresStore:
    """The Store of the service layer on one connection inside one transaction."""

    def __init__(self, conn: psycopg.Connection[Any], serialize: Serializer, dead_letter_topic: str) -> None:
        self._conn = conn
        self._serialize = serialize
        self._dead_letter_topic = dead_letter_topic
        self._staged: set[str] = set()  # the stages this transaction has filled
        # Locked SKUs whose units a plan promises (or may, once this transaction planned some): only theirs are
        # looked up in receipt_plan. A SKU not locked here is looked up.
        self._unplanned: set[str] = set()

    # ---- locks

    @_judged
    def lock_orders(self, order_ids: Sequence[str]) -> None:
        self._conn.execute(
            """SELECT count(pg_advisory_xact_lock(%s, hashtext(o)))
               FROM (SELECT o FROM unnest(%b::text[]) AS o ORDER BY o) AS orders""",
            (ORDER_LOCK_CLASS, list(order_ids)),
        )

    @_judged
    def lock_stock(self, skus: Sequence[str]) -> dict[str, int]:
        # One statement creates missing rows and locks all of them in SKU order, so two workers
        # whose batches share SKUs wait for each other instead of deadlocking.
        rows = self._conn.execute(
            """INSERT INTO stock_level AS s (sku) SELECT unnest(%b::text[]) ORDER BY 1
               ON CONFLICT (sku) DO UPDATE SET updated_at = s.updated_at
               RETURNING sku, available, promised""",
            (sorted(skus),),
        ).fetchall()
        self._unplanned.update(sku for sku, _, promised in rows if promised == 0)
        self._unplanned.difference_update(sku for sku, _, promised in rows if promised)
        return {sku: available for sku, available, _ in rows}

    @_judged
    def skus_of_orders(self, order_ids: Sequence[str]) -> set[str]:
        rows = self._conn.execute("SELECT DISTINCT sku FROM order_line WHERE order_id = ANY(%b)", (list(order_ids),))
        return {row[0] for row in rows.fetchall()}

    @_judged
    def stock(self, skus: Sequence[str]) -> dict[str, int]:
        rows = self._conn.execute("SELECT sku, available FROM stock_level WHERE sku = ANY(%b)", (list(skus),))
        found = dict(rows.fetchall())
        return {sku: found.get(sku, 0) for sku in skus}

    @_judged
    def queue_versions(self, skus: Sequence[str]) -> dict[str, int]:
        rows = self._conn.execute("SELECT sku, version FROM sku_queue_version WHERE sku = ANY(%b)", (list(skus),))
        return dict(rows.fetchall())

    @_judged
    def orders_given(self, cause: str, among: Collection[str] | None = None) -> set[str]:
        where, params = (
            ("cause = %s", (cause,)) if among is None else ("cause = %s AND order_id = ANY(%b)", (cause, list(among)))
        )
        rows = self._conn.execute(f"SELECT DISTINCT order_id FROM allocation WHERE {where}", params)
        return {order_id for (order_id,) in rows}

    @_judged
    def plan(self, cause: str) -> list[PlanStep]:
        # Without the lines, which a step reads only when it is given as its lines are now (`step_lines`): every
        # step's again at each step would read about 1,000,000 lines over a plan of 20 steps of 5,000 (2.6 ms a
        # step's).
        rows = self._conn.execute(
            "SELECT step, sku, units_total FROM receipt_plan WHERE cause = %s ORDER BY step", (cause,)
        )
        return [PlanStep(cause, step, sku, units) for step, sku, units in rows]

    @_judged
    def step_lines(self, cause: str, step: int) -> tuple[tuple[str, str, int], ...]:
        row = self._conn.execute(
            "SELECT order_ids, line_ids, units FROM receipt_plan WHERE cause = %s AND step = %s", (cause, step)
        ).fetchone()
        return () if row is None else tuple(zip(*row, strict=True))

    @_judged
    def hold_orders(self, order_ids: Sequence[str]) -> list[OrderLineState]:
        # Row locks, not advisory ones: they take no room in the lock table however many orders a
        # receipt fills. Taken in order_id order; a deadlock between two workers' batches is retried.
        self._conn.execute(
            "SELECT 1 FROM customer_order WHERE order_id = ANY(%b) ORDER BY order_id FOR UPDATE", (list(order_ids),)
        )
        return select_lines(self._conn, "l.order_id = ANY(%b)", (list(order_ids),))

    @_judged
    def hold_free_orders(self, order_ids: Sequence[str]) -> tuple[set[str], list[OrderLineState]]:
        rows = self._conn.execute(
            "SELECT order_id FROM customer_order WHERE order_id = ANY(%b) ORDER BY order_id FOR UPDATE SKIP LOCKED",
            (list(order_ids),),
        ).fetchall()
        held = [order_id for (order_id,) in rows]
        return set(held), select_lines(self._conn, "l.order_id = ANY(%b)", (held,)) if held else []

    @_judged
    def lock_sweep(self, wait: bool) -> bool:
        if wait:
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (SWEEP_LOCK,))
            return True
        row = self._conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SWEEP_LOCK,)).fetchone()
        return bool(row and row[0])

    # ---- loads

    @_judged
    def claim_facts(self, facts: Sequence[Fact]) -> dict[tuple[str, str], bytes]:
        # Inserted now, not at the save: a second worker handling the same fact waits here for this
        # transaction's end and then sees it, instead of both applying it.
        inserted = self._conn.execute(
            """INSERT INTO inbound_fact (kind, natural_key, event_id, content_hash)
               SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::bytea[])
               ON CONFLICT DO NOTHING RETURNING kind, natural_key""",
            (
                [f.kind for f in facts],
                [f.natural_key for f in facts],
                [f.event_id for f in facts],
                [f.content_hash for f in facts],
            ),
        ).fetchall()
        new = {(kind, key) for kind, key in inserted}
        old = [f for f in facts if (f.kind, f.natural_key) not in new]
        if not old:
            return {}
        rows = self._conn.execute(
            """SELECT i.kind, i.natural_key, i.content_hash
               FROM inbound_fact i JOIN unnest(%b::text[], %b::text[]) AS f(kind, natural_key)
                    USING (kind, natural_key)""",
            ([f.kind for f in old], [f.natural_key for f in old]),
        ).fetchall()
        return {(kind, key): bytes(content_hash) for kind, key, content_hash in rows}

    @_judged
    def lines(self, *, orders: Sequence[str] = (), every_waiting: bool = False) -> list[OrderLineState]:
        found: list[OrderLineState] = []
        if orders:
            found += select_lines(self._conn, "l.order_id = ANY(%b)", (list(orders),))
        if every_waiting:
            found += select_lines(self._conn, f"(l.status IN {WAITING_SQL} OR l.quantity_reserved > 0)", ())
        return found

    @_judged
    def load(self, wanted: Wanted) -> Loaded:
        # One pipeline: the reads go out together, and their rows come back in one round trip.
        conn = self._conn
        with conn.pipeline():
            read = [
                conn.execute(query, (list(keys), *more), prepare=prepare) if keys else None
                for query, keys, more, prepare in (
                    (POLICIES_QUERY, wanted.policies, (), None),
                    (_RESTOCKS_QUERY, wanted.restocks, (), None),
                    (_PENDING_QUERY, wanted.pending_cancellations, (), None),
                    # planned at every call (see _QUEUES_QUERY)
                    (_QUEUES_AT_ONCE_QUERY, wanted.queues, (QUEUE_ROWS_AT_ONCE + 1,), False),
                    (_DATED_QUERY, wanted.skus_with_expected_dates, (), None),
                    (_PROMISED_QUERY, self._maybe_planned(wanted.queues), (), None),
                )
            ]
        rows = [cursor.fetchall() if cursor is not None else [] for cursor in read]
        del read
        waiting: Iterable[tuple[Any, ...]] = rows[3]
        if len(rows[3]) > QUEUE_ROWS_AT_ONCE:  # a deep queue: read again, a chunk at a time
            rows[3] = []
            waiting = self._waiting_in_chunks(wanted.queues)
        return Loaded(
            policies_from(rows[0]),
            _restocks(rows[1]),
            _pending(rows[2]),
            _queues(wanted.queues, waiting),
            _dated(rows[4]),
            _promised(rows[5]),
        )

    def _waiting_in_chunks(self, skus: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        """The waiting lines of `skus` through a cursor on the server, QUEUE_CHUNK_ROWS at a time: a receipt
        into a queue of 100,000 lines held them three times over when libpq's result and psycopg's rows came
        whole. (Not `Cursor.stream`: libpq leaves its chunked mode on for the next pipeline's first statement.)"""
        with self._conn.cursor(name="waiting_lines") as cursor:
            cursor.execute(_QUEUES_QUERY, (list(skus),))
            while chunk := cursor.fetchmany(QUEUE_CHUNK_ROWS):
                yield from chunk

    # Each load alone is `load` of one (a pipeline of one statement: about 15 us more than a plain one).
    def queues(self, skus: Sequence[str]) -> dict[str, Mapping[tuple[str, str], OrderLineState]]:
        return self.load(Wanted(queues=skus)).queues

    @_judged
    def promised(self, skus: Sequence[str]) -> dict[str, frozenset[tuple[str, str]]]:
        if not (maybe := self._maybe_planned(skus)):
            return {}
        return _promised(self._conn.execute(_PROMISED_QUERY, (maybe,)).fetchall())

    def _maybe_planned(self, skus: Sequence[str]) -> list[str]:
        """The SKUs whose lines a plan may promise units to: the locked ones found with promised units, and those
        not locked here (a batch's queues are of locked SKUs, nearly all without: no statement for them)."""
        return [sku for sku in skus if sku not in self._unplanned]

    def skus_with_expected_dates(self, skus: Sequence[str]) -> set[str]:
        return self.load(Wanted(skus_with_expected_dates=skus)).skus_with_expected_dates

    def policies(self, skus: Sequence[str]) -> list[KeptPolicy]:
        return self.load(Wanted(policies=skus)).policies

    def restocks(self, skus: Sequence[str]) -> list[KeptRestock]:
        return self.load(Wanted(restocks=skus)).restocks

    def pending_cancellations(self, order_ids: Sequence[str]) -> list[PendingCancellation]:
        return self.load(Wanted(pending_cancellations=order_ids)).pending_cancellations

    @_judged
    def eta_told(self, order_ids: Sequence[str]) -> dict[str, dt.date | None]:
        rows = self._conn.execute(
            "SELECT order_id, eta_told FROM customer_order WHERE order_id = ANY(%b)", (list(order_ids),)
        ).fetchall()
        return dict(rows)

    @_judged
    def customer_lines(self, customer_id: str, sku: str) -> list[OrderLineState]:
        return select_lines(
            self._conn,
            """o.customer_id = %s AND l.sku = %s
               AND l.quantity - l.quantity_rejected - l.quantity_cancelled - l.quantity_allocated > 0""",
            (customer_id, sku),
        )

    @_judged
    def deliveries(self, supplier_ids: Sequence[str], last: int) -> list[Delivery]:
        rows = self._conn.execute(
            """SELECT receipt_id, supplier_id, purchase_order_id, sku, expected_date, received_on FROM (
                   SELECT *, row_number() OVER (PARTITION BY supplier_id
                                                ORDER BY received_on DESC, receipt_id COLLATE "C") AS n
                   FROM supplier_delivery WHERE supplier_id = ANY(%b)) AS recent
               WHERE n <= %s""",
            (list(supplier_ids), last),
        ).fetchall()
        return [Delivery(*row) for row in rows]

    @_judged
    def status_updates(self, order_ids: Sequence[str]) -> set[tuple[str, int]]:
        rows = self._conn.execute(
            "SELECT order_id, step FROM status_update WHERE order_id = ANY(%b)", (list(order_ids),)
        ).fetchall()
        return {(order_id, step) for order_id, step in rows}

    @_judged
    def shipment(self, shipment_id: str, order_id: str) -> dict[str, int]:
        rows = self._conn.execute(
            """SELECT line_id, sum(shipped) FROM allocation WHERE shipment_id = %s AND order_id = %s
               GROUP BY line_id HAVING sum(shipped) > 0""",
            (uuid.UUID(shipment_id), order_id),
        ).fetchall()
        return {line_id: int(units) for line_id, units in rows}

    # ---- writes

    @_judged
    def dead_letter(
        self, message: InboundMessage, error: RejectedMessage, at: dt.datetime, caused_at: dt.datetime | None
    ) -> bool:
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
        self._conn.execute(
            """INSERT INTO outbox (event_id, topic, message_key, message_value, header_names, header_values,
                   source_time)
               VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING""",
            (
                event_id("dead-letter", message.topic, str(message.partition), str(message.offset)),
                self._dead_letter_topic,
                key,
                value,
                [name for name, _ in headers],
                [v for _, v in headers],
                caused_at,
            ),
        )
        return True

    @_judged
    def save(self, changes: Changes) -> None:
        c = changes
        self._unplanned.difference_update(step.sku for step in c.plans_added)
        now = dt.datetime.now(dt.UTC)
        steps: list[_Step] = []
        if c.facts_unclaimed:
            steps.append(
                (
                    """DELETE FROM inbound_fact i USING unnest(%b::text[], %b::text[]) AS f(kind, natural_key)
                       WHERE i.kind = f.kind AND i.natural_key = f.natural_key""",
                    ([k for k, _ in c.facts_unclaimed], [n for _, n in c.facts_unclaimed]),
                )
            )
        new_ids = {n.order.order_id for n in c.new_orders}
        steps += _insert(
            "customer_order",
            _ORDER_COLUMNS,
            [
                (
                    o.order_id,
                    o.customer_id,
                    str(o.customer_tier),
                    str(o.shipping_service),
                    o.need_by,
                    str(o.split_preference) if o.split_preference else None,
                    o.currency,
                    o.placed_at,
                    n.event_id,
                    sum(line.quantity for line in o.lines),
                    str(c.outcomes[o.order_id]) if o.order_id in c.outcomes else None,
                    c.eta_told.get(o.order_id),
                )
                for n in c.new_orders
                for o in (n.order,)
            ],
        )
        steps += _insert(
            "order_line",
            _LINE_COLUMNS,
            [
                (
                    x.order_id,
                    x.line_id,
                    x.sku,
                    x.product_name,
                    x.ordered,
                    x.unit_price_minor,
                    str(x.split),
                    x.placed_at,
                    *_line_state(x),
                    now,
                )
                for x in c.new_lines
            ],
        )
        changed = [(x.order_id, x.line_id, *_line_state(x)) for x in c.changed_lines]
        if len(changed) > ARRAY_ROWS:
            # Staged, then counted: a temporary table has no statistics of its own, and guessed at a few
            # hundred rows it made the join below a scan of every line ever written.
            steps += [
                (_LINE_STAGE, ()),
                *self._emptied("line_change"),
                _Copy("line_change", _CHANGE_COLUMNS, changed),
                ("ANALYZE line_change", ()),
                _Long(_LINE_UPDATE_STAGED),
            ]
        elif changed:
            steps.append((_LINE_UPDATE_ARRAYS, _arrays(changed)))
        steps += _insert(
            "stock_receipt",
            _RECEIPT_COLUMNS,
            [
                (r.receipt_id, r.sku, r.quantity, r.supplier_id, r.purchase_order_id, r.received_at, eid)
                for r, eid in c.receipts
            ],
        )
        steps += _insert(
            "allocation",
            _ALLOCATION_COLUMNS,
            [
                (
                    d.order_id,
                    d.line_id,
                    d.sku,
                    d.quantity,
                    d.reserved,
                    d.shipped,
                    shipment,
                    d.cause,
                    d.rank,
                    d.reason,
                    d.at,
                )
                for d, shipment in c.allocations
            ],
        )
        steps += _statements(c, new_ids)
        if (delta := totals.statement(c)) is not None:
            steps.append(delta)
        if len(c.events) > ARRAY_ROWS:
            # Each event is encoded as the COPY takes it: a deep receipt's encoded events are never all held.
            # Copied into the outbox itself; only if an event's id is there already (the COPY fails on its unique
            # index) do the events go through the stage, whose insert leaves that one out. Through the stage every
            # time, the insert from it took 3.6 s of a deep receipt's 24 (300,000 events).
            steps.append(
                _Copy(
                    "outbox",
                    _OUTBOX_COLUMNS[1:],
                    (row[1:] for row in self._outbox_rows(c.events)),
                    instead=lambda: [
                        (_OUTBOX_STAGE, ()),
                        *self._emptied("outbox_stage"),
                        _Copy("outbox_stage", _OUTBOX_COLUMNS, self._outbox_rows(c.events)),
                        (_OUTBOX_INSERT_STAGED, ()),
                    ],
                )
            )
        elif c.events:
            steps.append((_OUTBOX_INSERT_ARRAYS, _arrays(list(self._outbox_rows(c.events)))))
        if queues := c.queue_skus:
            # Last, in SKU order: a transaction waiting for one of these rows waits for one that takes no
            # other lock after them. A random token rather than a count: a version is never given twice,
            # even to a transaction lost in a failover to a replica that had not received it.
            steps.append(
                (
                    """INSERT INTO sku_queue_version (sku, version)
                       SELECT sku, (random() * 9.2e18)::bigint FROM unnest(%b::text[]) AS f(sku) ORDER BY sku
                       ON CONFLICT (sku) DO UPDATE SET version = excluded.version""",
                    (queues,),
                )
            )
        _run(self._conn, steps)

    def _emptied(self, stage: str) -> list[_Step]:
        """A stage is emptied when its transaction commits. A second save in the same transaction (a deep
        receipt's steps) empties it first: its rows would be applied again, an older state of a line over a newer."""
        if stage in self._staged:
            return [(f"DELETE FROM {stage}", ())]
        self._staged.add(stage)
        return []

    def _outbox_rows(self, events: Sequence[tuple[OutboundEvent, dt.datetime | None]]) -> Iterator[tuple[Any, ...]]:
        for n, (event, caused_at) in enumerate(events):
            topic, key, value = self._serialize(event)
            yield n, event.event_id, topic, key, value, caused_at


# The loads a batch's preparation makes at once (`PostgresStore.load`).
# The queue read is planned for its SKUs at every call, never prepared: a prepared statement's generic plan
# outlives the statistics it was made with. One made in a new database's first minute (before autovacuum's
# first ANALYZE) scanned the whole table: 3.6 ms a batch at 9,000 lines, and growing. The status list is written
# into the SQL text, so that the partial index of waiting lines serves it.
_QUEUES_QUERY = lines_query(f"l.sku = ANY(%b) AND l.status IN {WAITING_SQL}")
# Queues of up to QUEUE_ROWS_AT_ONCE lines are read with the batch's other loads; deeper ones again in chunks.
QUEUE_ROWS_AT_ONCE = 5_000
QUEUE_CHUNK_ROWS = 2_000
_QUEUES_AT_ONCE_QUERY = f"{_QUEUES_QUERY} LIMIT %b"
# The lines of the queues' SKUs that plans promise units to: no other transaction gives them any. A handful of rows
# while a deep receipt is given in steps, none otherwise (the plans' rows are read by their SKU's index).
_PROMISED_QUERY = "SELECT sku, order_ids, line_ids FROM receipt_plan WHERE sku = ANY(%b)"
_DATED_QUERY = f"""SELECT s FROM unnest(%b::text[]) AS s
                   WHERE EXISTS (SELECT 1 FROM order_line
                                 WHERE sku = s AND status IN {WAITING_SQL} AND expected_ship_date IS NOT NULL)"""
_RESTOCKS_QUERY = """SELECT sku, purchase_order_id, supplier_id, quantity, expected_date, decided_at, event_id
                     FROM expected_restock WHERE sku = ANY(%b)"""
_PENDING_QUERY = """SELECT order_id, event_id, line_ids, reason, note, requested_at FROM pending_cancellation
                    WHERE order_id = ANY(%b)"""


def _queues(
    skus: Sequence[str], rows: Iterable[tuple[Any, ...]]
) -> dict[str, Mapping[tuple[str, str], OrderLineState]]:
    found: dict[str, dict[tuple[str, str], OrderLineState]] = {sku: {} for sku in skus}
    for line in lines_from(rows):
        found[line.sku][(line.order_id, line.line_id)] = line
    return dict(found)


def _dated(rows: list[tuple[Any, ...]]) -> set[str]:
    return {row[0] for row in rows}


def _promised(rows: list[tuple[Any, ...]]) -> dict[str, frozenset[tuple[str, str]]]:
    found: dict[str, set[tuple[str, str]]] = {}
    for sku, order_ids, line_ids in rows:
        found.setdefault(sku, set()).update(zip(order_ids, line_ids, strict=True))
    return {sku: frozenset(keys) for sku, keys in found.items()}


def _restocks(rows: list[tuple[Any, ...]]) -> list[KeptRestock]:
    return [KeptRestock(r[0], ExpectedReceipt(r[1], r[2], r[3], r[4]), r[5], r[6]) for r in rows]


def _pending(rows: list[tuple[Any, ...]]) -> list[PendingCancellation]:
    return [PendingCancellation(Cancellation(r[0], tuple(r[2]), CancelReason(r[3]), r[4], r[5]), r[1]) for r in rows]


# How a save writes a set of rows. Up to ARRAY_ROWS rows go as one array per column, in a statement that joins the
# pipeline of the save's other statements: a batch of a few orders is written in one round trip. A larger set goes
# by COPY, whose rows psycopg formats in C, but a COPY costs two round trips of its own and can be in no pipeline.
ARRAY_ROWS = 200

# (name, type): the table's own type, as psycopg's types registry names it. A binary COPY sends each value in the
# format of this type, which the column must have exactly (an int4 into a bigint column is refused).
Columns = tuple[tuple[str, str], ...]

# fmt: off

_ORDER_COLUMNS: Columns = (
    ("order_id", "text"), ("customer_id", "text"), ("customer_tier", "text"), ("shipping_service", "text"),
    ("need_by", "date"), ("split_preference", "text"), ("currency", "text"), ("placed_at", "timestamptz"),
    ("event_id", "text"), ("order_units", "int4"), ("outcome", "text"), ("eta_told", "date"),
)
# The columns of a line that change (`_line_state`), as the line_change stage and the update name them.
_STATE_COLUMNS: Columns = (
    ("allocated", "int4"), ("reserved", "int4"), ("rejected", "int4"), ("cancelled", "int4"), ("shipped", "int4"),
    ("status", "text"), ("reason", "text"), ("cancel_reason", "text"), ("expected", "date"), ("basis", "text"),
    ("backordered", "bool"), ("filled_at", "timestamptz"), ("shipped_at", "timestamptz"),
)
_LINE_COLUMNS: Columns = (
    ("order_id", "text"), ("line_id", "text"), ("sku", "text"), ("product_name", "text"), ("quantity", "int4"),
    ("unit_price_minor", "bigint"), ("split", "text"), ("placed_at", "timestamptz"),
    ("quantity_allocated", "int4"), ("quantity_reserved", "int4"), ("quantity_rejected", "int4"),
    ("quantity_cancelled", "int4"), ("quantity_shipped", "int4"), ("status", "text"), ("status_reason", "text"),
    ("cancel_reason", "text"), ("expected_ship_date", "date"), ("eta_basis", "text"), ("backordered", "bool"),
    ("filled_at", "timestamptz"), ("shipped_at", "timestamptz"), ("updated_at", "timestamptz"),
)
_CHANGE_COLUMNS: Columns = (("order_id", "text"), ("line_id", "text"), *_STATE_COLUMNS)
_RECEIPT_COLUMNS: Columns = (
    ("receipt_id", "text"), ("sku", "text"), ("quantity", "int4"), ("supplier_id", "text"),
    ("purchase_order_id", "text"), ("received_at", "timestamptz"), ("event_id", "text"),
)
_ALLOCATION_COLUMNS: Columns = (
    ("order_id", "text"), ("line_id", "text"), ("sku", "text"), ("quantity", "int4"), ("reserved", "int4"),
    ("shipped", "int4"), ("shipment_id", "uuid"), ("cause", "text"), ("rank", "int4"), ("reason", "text"),
    ("allocated_at", "timestamptz"),
)
_OUTBOX_COLUMNS: Columns = (
    ("n", "int4"), ("event_id", "uuid"), ("topic", "text"), ("message_key", "bytea"), ("message_value", "bytea"),
    ("source_time", "timestamptz"),
)
# fmt: on

_LINE_UPDATE = """UPDATE order_line l SET quantity_allocated = f.allocated, quantity_reserved = f.reserved,
                      quantity_rejected = f.rejected, quantity_cancelled = f.cancelled, quantity_shipped = f.shipped,
                      status = f.status, status_reason = f.reason, cancel_reason = f.cancel_reason,
                      expected_ship_date = f.expected, eta_basis = f.basis, backordered = f.backordered,
                      filled_at = f.filled_at, shipped_at = f.shipped_at, updated_at = now()
                  FROM {source}
                  WHERE l.order_id = f.order_id AND l.line_id = f.line_id"""
_OUTBOX_INSERT = """INSERT INTO outbox (event_id, topic, message_key, message_value, source_time)
                    SELECT event_id, topic, message_key, message_value, source_time FROM {source}
                    ORDER BY n  -- the ids follow the events' order: consumers see each key's events in order
                    ON CONFLICT (event_id) DO NOTHING"""


@dataclass(frozen=True, slots=True)
class _Copy:
    table: str
    columns: Columns
    rows: Iterable[Sequence[Any]]
    # Run instead of the COPY when a row of it is in the table already (a unique index refuses it): the COPY
    # then runs in a savepoint, rolled back before these steps.
    instead: Callable[[], Sequence[_Step]] | None = None


@dataclass(frozen=True, slots=True)
class _Long:
    """A statement without parameters that keeps the server busy a while (a deep receipt's step updating 5,000 lines
    from their stage): sent alone, and the rows of the COPYs after it are made while the server runs it."""

    query: str


_Step = tuple[str, Sequence[Any]] | _Copy | _Long


def _columns(table: str, columns: Columns, *, typed: bool = False) -> str:
    names = ", ".join(f"{name} {kind}" if typed else name for name, kind in columns)
    return f"{table} ({names})" if table else names


def _unnest(columns: Columns) -> str:
    return f"unnest({', '.join(f'%b::{kind}[]' for _, kind in columns)})"


def _arrays(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]


def _insert(table: str, columns: Columns, rows: list[tuple[Any, ...]]) -> list[_Step]:
    if not rows:
        return []
    if len(rows) > ARRAY_ROWS:
        return [_Copy(table, columns, rows)]
    return [(_insert_from_arrays(table, columns), _arrays(rows))]


@functools.cache
def _insert_from_arrays(table: str, columns: Columns) -> str:
    return f"INSERT INTO {_columns(table, columns)} SELECT * FROM {_unnest(columns)}"


def _stage_table(name: str, columns: Columns) -> str:
    return f"CREATE TEMP TABLE IF NOT EXISTS {name} ({_columns('', columns, typed=True)}) ON COMMIT DELETE ROWS"


# The statements of the save, made once. A large set is copied into a table of this connection's session and
# applied from there by one statement; the table is emptied at every commit, and created by the transaction that
# first needs it (and again after one that rolled back its creation).
_LINE_STAGE = _stage_table("line_change", _CHANGE_COLUMNS)
_LINE_UPDATE_STAGED = _LINE_UPDATE.format(source="line_change f")
_LINE_UPDATE_ARRAYS = _LINE_UPDATE.format(source=f"{_unnest(_CHANGE_COLUMNS)} AS f({_columns('', _CHANGE_COLUMNS)})")
_OUTBOX_STAGE = _stage_table("outbox_stage", _OUTBOX_COLUMNS)
_OUTBOX_INSERT_STAGED = _OUTBOX_INSERT.format(source="outbox_stage")
_OUTBOX_INSERT_ARRAYS = _OUTBOX_INSERT.format(
    source=f"{_unnest(_OUTBOX_COLUMNS)} AS f({_columns('', _OUTBOX_COLUMNS)})"
)


def _run(conn: psycopg.Connection[Any], steps: Sequence[_Step]) -> None:
    """The steps in order: each run of statements in one pipeline (one round trip), each COPY on its own.

    While the server takes in a COPY's rows (inserts them, then checks their foreign keys: in a burst of orders, 16%
    of the consume thread's time went to waiting for that), or runs a `_Long` statement, the rows of the COPYs after
    it are made, in their order, for as long as the server is busy (`_Rows.make_ahead`): the events encoded for the
    outbox, say, while the server checks the new lines' orders."""
    later = [_Rows(s.rows) for s in steps if isinstance(s, _Copy)]
    statements: list[tuple[str, Sequence[Any]]] = []
    for step in [*steps, None]:
        if isinstance(step, tuple):
            statements.append(step)
            continue
        if statements:
            with conn.pipeline():
                for query, params in statements:
                    conn.execute(query, params)
            statements = []
        if isinstance(step, _Long):
            _execute(conn, step.query, meanwhile=functools.partial(_make_ahead, later))
        elif step is not None:
            rows = later.pop(0)
            _copy(conn, dataclasses.replace(step, rows=rows), meanwhile=functools.partial(_make_ahead, later))


# Rows made ahead of their COPY are held until it: at most this many a COPY, each made as it is copied beyond that;
# the COPYs after one that holds as many wait for their own turn. A deep receipt's step of 5,000 lines has about
# 15,000 events: all made while the server updates the step's lines (its last event 0.5-1.2 s sooner than with 5,000
# made ahead, bench's 100,000 lines); the worker's peak stays that of the plan's transaction (194 MB either way).
AHEAD_ROWS = 20_000
_AHEAD_SLICE = 32  # rows made between two looks at whether the server is still busy


class _Rows:
    """A COPY's rows: some made ahead (`make_ahead`), then the rest as the COPY takes them. Rows given as a list are
    made already."""

    def __init__(self, rows: Iterable[Sequence[Any]]) -> None:
        self._made: list[Sequence[Any]] = []
        self._rest: Iterator[Sequence[Any]] | None = None
        if isinstance(rows, list):
            self._made = rows
        else:
            self._rest = iter(rows)

    def make_ahead(self, busy: Callable[[], bool]) -> bool:
        """Make rows while `busy()`, up to AHEAD_ROWS in all; True if all are made."""
        while self._rest is not None:
            wanted = min(AHEAD_ROWS - len(self._made), _AHEAD_SLICE)
            if wanted <= 0:
                return False
            some = list(itertools.islice(self._rest, wanted))
            self._made += some
            if len(some) < wanted:
                self._rest = None
            elif len(self._made) == AHEAD_ROWS:  # full: all made if none follows (a deep receipt's step's 5,000)
                following = next(self._rest, None)
                if following is not None:
                    self._rest = itertools.chain((following,), self._rest)
                    return False
                self._rest = None
            elif not busy():
                return False
        return True

    def __iter__(self) -> Iterator[Sequence[Any]]:
        made, rest, self._made, self._rest = self._made, self._rest, [], None
        yield from made
        if rest is not None:
            yield from rest


def _make_ahead(later: Sequence[_Rows], busy: Callable[[], bool]) -> None:
    for rows in later:
        if not rows.make_ahead(busy):
            return


Meanwhile = Callable[[Callable[[], bool]], None]  # given `busy()`: True while the server's answer has not come


class _MeanwhileWriter(psycopg.copy.LibpqWriter):
    """A COPY's writer that, once it has sent the end (and every row before it), calls `meanwhile` before it waits for
    the server's answer."""

    def __init__(self, cursor: psycopg.Cursor[Any], meanwhile: Meanwhile) -> None:
        super().__init__(cursor)
        self._meanwhile = meanwhile

    def finish(self, exc: BaseException | None = None) -> None:
        if exc is not None:
            super().finish(exc)
            return
        answer = self.connection.wait(_copy_end(self._pgconn, self._meanwhile, self.connection.info.encoding))
        self.cursor._results = [answer]  # as psycopg's own writer leaves it: the cursor's rowcount is the COPY's


def _copy_end(pgconn: psycopg.pq.abc.PGconn, meanwhile: Meanwhile, encoding: str) -> PQGen[PGresult]:
    """psycopg's `copy_end` (psycopg.generators of 3.3, which pyproject pins), with `meanwhile` called between
    sending the end and waiting for the answer (`_answer`)."""
    while pgconn.put_copy_end(None) == 0:
        while not (yield Wait.W):
            continue
    (result,) = yield from _answer(pgconn, meanwhile, encoding)
    return result


def _execute(conn: psycopg.Connection[Any], query: str, *, meanwhile: Meanwhile) -> None:
    """`query` (no parameters) sent, then `meanwhile` called before waiting for the answer (`_answer`)."""
    with conn.lock:
        conn.pgconn.send_query(query.encode())
        conn.wait(_answer(conn.pgconn, meanwhile, conn.info.encoding))


def _answer(pgconn: psycopg.pq.abc.PGconn, meanwhile: Meanwhile, encoding: str) -> PQGen[list[PGresult]]:
    """With a command queued: sent (psycopg's `send`), `meanwhile(busy)` called (`busy()`: the answer has not come
    yet), then the answer read.
    A failure of `meanwhile` is raised once the answer has been read, so that the connection is left ready for the
    rollback; if the server refused the command too, its error is raised (a deadlock is retried, where a failure of
    the rows made ahead would be taken for a message's fault), from that failure. An interruption (Ctrl-C) during
    `meanwhile` waits for the answer too."""

    def busy() -> bool:
        pgconn.consume_input()
        return bool(pgconn.is_busy())

    yield from send(pgconn)
    failed: BaseException | None = None
    try:
        meanwhile(busy)
    except BaseException as exc:  # raised below, once the answer is read
        failed = exc
    results: list[PGresult] = yield from fetch_many(pgconn)
    for result in results:
        if result.status not in (psycopg.pq.ExecStatus.COMMAND_OK, psycopg.pq.ExecStatus.TUPLES_OK):
            raise psycopg.errors.error_from_result(result, encoding=encoding) from failed
    if failed is not None:
        raise failed
    return results


class _UuidTextBinaryDumper(psycopg.adapt.Dumper):
    """A uuid column of a binary COPY given the uuid's text, as the events' and shipments' ids are kept."""

    format = psycopg.pq.Format.BINARY
    oid = psycopg.adapters.types["uuid"].oid

    def dump(self, obj: str) -> bytes:
        return bytes.fromhex(obj.replace("-", ""))


def _copy(conn: psycopg.Connection[Any], step: _Copy, *, meanwhile: Meanwhile) -> None:
    """COPY in binary: psycopg formats each row in C, and neither side writes or parses text (a row of the
    outbox took 3 us of the worker's CPU and 3 of PostgreSQL's in text, 1 and 1 in binary)."""
    if step.instead is None:
        _copy_rows(conn, step, meanwhile)
        return
    try:
        with conn.transaction():
            _copy_rows(conn, step, meanwhile)
    except psycopg.errors.UniqueViolation:
        _run(conn, step.instead())


def _copy_rows(conn: psycopg.Connection[Any], step: _Copy, meanwhile: Meanwhile) -> None:
    rows = iter(step.rows)
    first = next(rows, None)
    if first is None:
        return
    with conn.cursor() as cur:
        cur.adapters.register_dumper(None, _UuidTextBinaryDumper)  # for set_types, on this cursor only
        statement = f"COPY {_columns(step.table, step.columns)} FROM STDIN (FORMAT BINARY)"
        with cur.copy(statement, writer=_MeanwhileWriter(cur, meanwhile)) as copy:
            copy.set_types([kind for _, kind in step.columns])
            copy.write_row(first)
            for row in rows:
                copy.write_row(row)


def _statements(c: Changes, new_ids: set[str]) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """The statements that write the small sets of `c`, in an order the foreign keys accept."""
    changed_orders = sorted((set(c.outcomes) | set(c.eta_told)) - new_ids)
    if changed_orders:
        yield (
            """UPDATE customer_order o SET outcome = coalesce(f.outcome, o.outcome),
                   eta_told = CASE WHEN f.told_set THEN f.told ELSE o.eta_told END
               FROM unnest(%b::text[], %b::text[], %b::bool[], %b::date[]) AS f(order_id, outcome, told_set, told)
               WHERE o.order_id = f.order_id""",
            (
                changed_orders,
                [str(c.outcomes[x]) if x in c.outcomes else None for x in changed_orders],
                [x in c.eta_told for x in changed_orders],
                [c.eta_told.get(x) for x in changed_orders],
            ),
        )
    if c.stock:
        skus = sorted(c.stock)
        yield (
            """UPDATE stock_level s SET available = f.available, received_total = s.received_total + f.received,
                   promised = s.promised + f.promised, updated_at = now()
               FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::bigint[])
                    AS f(sku, available, received, promised)
               WHERE s.sku = f.sku""",
            (skus, [c.stock[s][0] for s in skus], [c.stock[s][1] for s in skus], [c.stock[s][2] for s in skus]),
        )
    for step in c.plans_added:  # a deep receipt's: one row a step of some thousand lines
        assert step.lines is not None, "a step is planned with its lines"
        yield (
            """INSERT INTO receipt_plan (cause, step, sku, units_total, order_ids, line_ids, units)
               VALUES (%s, %s, %s, %s, %b::text[], %b::text[], %b::int[])""",
            (
                step.cause,
                step.step,
                step.sku,
                step.units,
                [order_id for order_id, _, _ in step.lines],
                [line_id for _, line_id, _ in step.lines],
                [units for _, _, units in step.lines],
            ),
        )
    if c.plans_taken:
        yield (
            """DELETE FROM receipt_plan p USING unnest(%b::text[], %b::int[]) AS f(cause, step)
               WHERE p.cause = f.cause AND p.step = f.step""",
            ([cause for cause, _ in c.plans_taken], [step for _, step in c.plans_taken]),
        )
    for p in c.policies:  # a few a day: one statement each
        yield (
            """INSERT INTO product_policy AS p (sku, backorders_allowed, discontinued, max_backorder_qty_per_customer,
                   payment_timing, default_split, lead_time_days, stale_after_days, decided_at, event_id,
                   available_from, max_promise_days)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (sku) DO UPDATE SET
                   backorders_allowed = EXCLUDED.backorders_allowed, discontinued = EXCLUDED.discontinued,
                   max_backorder_qty_per_customer = EXCLUDED.max_backorder_qty_per_customer,
                   payment_timing = EXCLUDED.payment_timing, default_split = EXCLUDED.default_split,
                   lead_time_days = EXCLUDED.lead_time_days, stale_after_days = EXCLUDED.stale_after_days,
                   decided_at = EXCLUDED.decided_at, event_id = EXCLUDED.event_id,
                   available_from = EXCLUDED.available_from, max_promise_days = EXCLUDED.max_promise_days,
                   recorded_at = now()""",
            (
                p.sku,
                p.policy.backorders_allowed,
                p.policy.discontinued,
                p.policy.max_backorder_qty_per_customer,
                str(p.policy.payment_timing),
                str(p.policy.default_split),
                p.policy.lead_time_days,
                p.policy.stale_after_days,
                p.decided_at,
                p.event_id,
                p.policy.available_from,
                p.policy.max_promise_days,
            ),
        )
    if c.restocks:
        k = c.restocks
        yield (
            """INSERT INTO expected_restock AS r (purchase_order_id, sku, supplier_id, quantity, expected_date,
                   decided_at, event_id)
               SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::int[], %b::date[], %b::timestamptz[],
                                    %b::text[])
               ON CONFLICT (purchase_order_id, sku) DO UPDATE SET
                   supplier_id = EXCLUDED.supplier_id, quantity = EXCLUDED.quantity,
                   expected_date = EXCLUDED.expected_date, decided_at = EXCLUDED.decided_at,
                   event_id = EXCLUDED.event_id, updated_at = now()""",
            (
                [x.restock.purchase_order_id for x in k],
                [x.sku for x in k],
                [x.restock.supplier_id for x in k],
                [x.restock.quantity for x in k],
                [x.restock.expected_date for x in k],
                [x.decided_at for x in k],
                [x.event_id for x in k],
            ),
        )
    if c.deliveries:
        v = c.deliveries
        yield (
            """INSERT INTO supplier_delivery (receipt_id, supplier_id, purchase_order_id, sku, expected_date,
                   received_on, days_late)
               SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::date[], %b::date[], %b::int[])
               ON CONFLICT DO NOTHING""",
            (
                [x.receipt_id for x in v],
                [x.supplier_id for x in v],
                [x.purchase_order_id for x in v],
                [x.sku for x in v],
                [x.expected_date for x in v],
                [x.received_on for x in v],
                [x.days_late for x in v],
            ),
        )
    for pending in c.pending_added:  # rare: a cancellation that overtook its order
        early = pending.cancellation
        yield (
            """INSERT INTO pending_cancellation (order_id, event_id, line_ids, reason, note, requested_at)
               VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            (early.order_id, pending.event_id, list(early.line_ids), str(early.reason), early.note, early.requested_at),
        )
    if c.pending_applied:
        yield ("DELETE FROM pending_cancellation WHERE order_id = ANY(%b)", (c.pending_applied,))
    if c.status_updates:
        yield (
            """INSERT INTO status_update (order_id, step) SELECT * FROM unnest(%b::text[], %b::int[])
               ON CONFLICT DO NOTHING""",
            ([o for o, _ in c.status_updates], [s for _, s in c.status_updates]),
        )
    for x in c.dispatches:
        yield (
            """INSERT INTO shipment_dispatch (shipment_id, order_id, carrier, tracking_number, estimated_delivery,
                   dispatched_at) VALUES (%s, %s, %s, %s, %s, %s)""",
            (uuid.UUID(x.shipment_id), x.order_id, x.carrier, x.tracking_number, x.estimated_delivery, x.at),
        )


def _line_state(x: OrderLineState) -> tuple[Any, ...]:
    """The columns of a line that change, in the order the statements above name them."""
    return (
        x.allocated,
        x.reserved,
        x.rejected,
        x.cancelled,
        x.shipped,
        str(x.status),
        x.reason,
        str(x.cancel_reason) if x.cancel_reason else None,
        x.expected_ship_date,
        x.eta_basis,
        x.backordered,
        x.filled_at,
        x.shipped_at,
    )


class PostgresUnitOfWorkFactory:
    def __init__(self, pool: ConnectionPool, serialize: Serializer, dead_letter_topic: str) -> None:
        self._pool = pool
        self._serialize = serialize
        self._dead_letter_topic = dead_letter_topic

    @contextmanager
    def __call__(self, *, rollback: bool = False) -> Iterator[Book]:
        """A unit of work that saves and commits at the end of the block (or, with rollback=True, never does)."""
        with transaction(self._pool, rollback=rollback) as conn:
            book = Book(PostgresStore(conn, self._serialize, self._dead_letter_topic))
            yield book
            book.save()


def _writes_nothing(event: OutboundEvent) -> tuple[str, bytes, bytes]:
    raise RuntimeError("a snapshot writes nothing")


@contextmanager
def snapshot(pool: ConnectionPool) -> Iterator[PostgresStore]:
    """A store on one consistent, read-only snapshot of the database (a transaction that is rolled back):
    for a promise, which must see one moment of the queue and change nothing."""
    with transaction(pool, rollback=True) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield PostgresStore(conn, _writes_nothing, "")
