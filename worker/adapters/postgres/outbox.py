"""The outbox: what a transaction writes for the relay to publish, dead letters included, and how the
relay reads, marks and parks its rows."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import psycopg

from worker.adapters.postgres.common import RELAY_LOCK
from worker.service.messages import InboundMessage

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


class OutboxRow(NamedTuple):
    """A row to publish. A tuple, not a dataclass: a round reads up to 10,000 of them, and a frozen dataclass
    took 2.0 us to make against 0.4 (with no headers to copy)."""

    outbox_id: int
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    # When the row was written, and when the inbound event that caused it was, if one did: seconds since the epoch.
    # Read as numbers, not timestamps: a round's delays are differences of them (a timestamp loaded and subtracted
    # took 0.4 us, a number 0.12; twice a row).
    created_s: float
    source_s: float | None


def try_lock_relay(conn: psycopg.Connection[Any]) -> bool:
    """Only one relay in the group publishes at a time, which keeps each key's events in order."""
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (RELAY_LOCK,)).fetchone()
    return bool(row and row[0])


_UNPUBLISHED = """SELECT outbox_id, topic, message_key, message_value, header_names, header_values,
                         extract(epoch FROM created_at)::float8, extract(epoch FROM source_time)::float8
                  FROM (SELECT page.*,
                               coalesce(sum(coalesce(octet_length(message_key), 0)
                                            + coalesce(octet_length(message_value), 0))
                                        OVER (ORDER BY outbox_id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                                 AS bytes_before
                        FROM (SELECT outbox_id, topic, message_key, message_value, header_names, header_values,
                                     created_at, source_time
                              FROM outbox WHERE published_at IS NULL AND failed_at IS NULL
                              ORDER BY outbox_id LIMIT %s) AS page) AS budgeted
                  WHERE bytes_before < %s ORDER BY outbox_id"""


def unpublished(conn: psycopg.Connection[Any], limit: int, max_bytes: int) -> list[OutboxRow]:
    """The oldest rows to publish: at most `limit`, and only while the keys and values before a row add up
    to less than `max_bytes` (so the row that crosses it comes too, and a round always has one row).
    Read in binary: keys and values come as they are, not hex-encoded (10,000 rows: 57 ms in text, 39 in binary).

    Called in the relay's transaction, whose planner it tells not to sort (`enable_sort`, for this transaction):
    the outbox goes from empty to hundreds of thousands of rows and back faster than autoanalyze follows, and
    planned with the statistics of an empty outbox the page was a bitmap scan of every waiting row, then a sort
    (185-306 ms a round of 10,000 with 300,000 waiting, after a deep receipt; 35-53 ms by the index, in order)."""
    with conn.pipeline():  # the setting and the read in one round trip
        conn.execute("SET LOCAL enable_sort = off")
        cursor = conn.execute(_UNPUBLISHED, (limit, max_bytes), binary=True)
    rows = cursor.fetchall()
    return [
        OutboxRow(
            r[0],
            r[1],
            _bytes(r[2]),
            _bytes(r[3]),
            [(n, bytes(v)) for n, v in zip(r[4], r[5], strict=True)] if r[4] else [],  # only dead letters have any
            r[6],
            r[7],
        )
        for r in rows
    ]


def remove_published(conn: psycopg.Connection[Any], outbox_ids: Sequence[int]) -> None:
    """Delete the rows Kafka acknowledged. One statement for the round; each row is one deleted tuple, where
    stamping it published wrote a new version of it and three index entries (10,000 rows: 25 ms against 101 ms)."""
    if outbox_ids:
        conn.execute("DELETE FROM outbox WHERE outbox_id = ANY(%b::bigint[])", (list(outbox_ids),))


def park(conn: psycopg.Connection[Any], refused: Mapping[int, str]) -> None:
    """Rows Kafka refused for good (outbox id -> why): never retried, kept for an operator to look at."""
    if refused:
        conn.execute(
            """UPDATE outbox SET failed_at = now(), last_error = f.error
               FROM unnest(%b::bigint[], %b::text[]) AS f(outbox_id, error) WHERE outbox.outbox_id = f.outbox_id""",
            (list(refused), [error_text(e) for e in refused.values()]),
        )


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)
