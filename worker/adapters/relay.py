"""The outbox relay: publishes committed outbox rows to Kafka and stamps them only once Kafka has them.

One relay in the whole group works at a time (a transaction-scoped advisory lock), which keeps the
events of each key in the order they were written. The producer is idempotent, so its own retries
do not duplicate; a relay killed between Kafka's acknowledgement and the stamp publishes those rows
again after restart, with the same event ids, which consumers deduplicate.

A row Kafka refuses for good (too large, not authorised, an unknown topic, an invalid record) is
parked: stamped `failed_at` with the error, counted, never retried, and it blocks nothing behind it.
Rows acknowledged in a round are stamped whatever else happened in it, so they are never sent twice
because of a neighbour. A transient failure (the broker down, a message timed out) leaves the row
to the next round.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from psycopg_pool import ConnectionPool

from worker.adapters import postgres

log = structlog.get_logger(__name__)

# (acknowledged per topic, not acknowledged, seconds from decision to ack, seconds from inbound event to ack)
PublishedCallback = Callable[[dict[str, int], int, list[float], list[float]], None]
# (topic, reason): one row refused for good and parked
RefusedCallback = Callable[[str, str], None]

# Errors that retrying the same message cannot cure, by the bounded `reason` they are counted under.
REFUSALS: dict[int, str] = {
    KafkaError.MSG_SIZE_TOO_LARGE: "too_large",
    KafkaError.RECORD_LIST_TOO_LARGE: "too_large",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "not_authorized",
    KafkaError.UNKNOWN_TOPIC_OR_PART: "unknown_topic",
    KafkaError._UNKNOWN_TOPIC: "unknown_topic",
    KafkaError._UNKNOWN_PARTITION: "unknown_topic",
    KafkaError.TOPIC_EXCEPTION: "invalid",
    KafkaError.INVALID_RECORD: "invalid",
    KafkaError._INVALID_ARG: "invalid",
}
REFUSAL_REASONS = tuple(sorted(set(REFUSALS.values())))
PURGE_INTERVAL_S = 60.0


def refusal_reason(err: KafkaError) -> str | None:
    """Why Kafka will never take this message, or None when the failure is the producer's or passing."""
    if err.fatal():  # the producer itself is broken, not the message
        return None
    return REFUSALS.get(err.code())


@dataclass
class Round:
    """What happened to the rows of one round."""

    delivered: list[int] = field(default_factory=list)
    per_topic: dict[str, int] = field(default_factory=dict)
    refused: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # outbox id -> (topic, reason, error)
    not_acknowledged: int = 0  # left to the next round
    producer_error: KafkaException | None = None  # the producer failed as a whole: the round stopped there


class OutboxRelay:
    def __init__(
        self,
        pool: ConnectionPool,
        producer: Producer,
        *,
        batch_size: int,
        interval_s: float,
        delivery_timeout_s: float,
        retention: postgres.Retention,
        on_published: PublishedCallback | None = None,
        on_refused: RefusedCallback | None = None,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._delivery_timeout_s = delivery_timeout_s
        self._retention = retention
        self._on_published = on_published
        self._on_refused = on_refused
        self._last_purge = 0.0
        self.wake = threading.Event()

    def publish_once(self) -> int:
        """Publish one batch of pending rows; returns how many Kafka acknowledged."""
        rows: list[postgres.OutboxRow] = []
        result = Round()
        with self._pool.connection() as conn:
            with conn.transaction():
                if not postgres.try_lock_relay(conn):
                    return 0
                rows = postgres.unpublished(conn, self._batch_size)
                if rows:
                    result = self.publish(rows)
                    postgres.mark_published(conn, result.delivered)
                    postgres.park(conn, {i: f"{reason}: {error}" for i, (_, reason, error) in result.refused.items()})
            self._purge(conn)
        self._report(rows, result)
        if result.producer_error is not None:
            raise result.producer_error
        return len(result.delivered)

    def publish(self, rows: Sequence[postgres.OutboxRow]) -> Round:
        """Hand `rows` to the producer and wait for Kafka's answers (up to the delivery timeout)."""
        result = Round()

        def report(row: postgres.OutboxRow, err: KafkaError | None, msg: Message) -> None:
            if err is None:
                result.delivered.append(row.outbox_id)
                topic = msg.topic() or row.topic
                result.per_topic[topic] = result.per_topic.get(topic, 0) + 1
                return
            reason = refusal_reason(err)
            if reason is None:
                result.not_acknowledged += 1
            else:
                result.refused[row.outbox_id] = (row.topic, reason, err.str())

        for row in rows:
            try:
                self._produce(row, report)
            except KafkaException as exc:  # refused before it was sent, e.g. larger than message.max.bytes
                err = exc.args[0]
                reason = refusal_reason(err) if isinstance(err, KafkaError) else None
                if reason is None:
                    result.producer_error = exc
                    break
                result.refused[row.outbox_id] = (row.topic, reason, err.str())
        pending = self._producer.flush(self._delivery_timeout_s + 5)  # delivery reports run in here
        result.not_acknowledged += pending
        return result

    def _produce(
        self, row: postgres.OutboxRow, report: Callable[[postgres.OutboxRow, KafkaError | None, Message], None]
    ) -> None:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            report(row, err, msg)

        headers: list[tuple[str, str | bytes | None]] = list(row.headers)
        while True:
            try:
                self._producer.produce(
                    row.topic, key=row.key, value=row.value, headers=headers, on_delivery=on_delivery
                )
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.5)

    def _report(self, rows: Sequence[postgres.OutboxRow], result: Round) -> None:
        for outbox_id, (topic, reason, error) in result.refused.items():
            log.error("outbox_row_refused", outbox_id=outbox_id, topic=topic, reason=reason, error=error)
            if self._on_refused is not None:
                self._on_refused(topic, reason)
        if result.not_acknowledged or result.producer_error is not None:
            log.warning(
                "outbox_publish_incomplete",
                delivered=len(result.delivered),
                not_acknowledged=result.not_acknowledged,
                error=str(result.producer_error) if result.producer_error else None,
            )
        if self._on_published is not None and rows:
            written = {row.outbox_id: row.created_at for row in rows}
            caused = {row.outbox_id: row.source_time for row in rows if row.source_time is not None}
            acknowledged = dt.datetime.now(dt.UTC)
            delays = [(acknowledged - written[i]).total_seconds() for i in result.delivered]
            latencies = [(acknowledged - caused[i]).total_seconds() for i in result.delivered if i in caused]
            self._on_published(result.per_topic, result.not_acknowledged, delays, latencies)

    def _purge(self, conn: Any) -> None:
        """Apply the retentions, at most once a minute, outside the publishing transaction."""
        now = time.monotonic()
        if now - self._last_purge < PURGE_INTERVAL_S:
            return
        self._last_purge = now
        try:
            purged = {kind: n for kind, n in postgres.purge(conn, self._retention).items() if n}
        except psycopg.Error as exc:  # the next purge may succeed; publishing must go on meanwhile
            log.warning("purge_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if purged:
            log.info("purged", **purged)

    def run(
        self,
        stop: threading.Event,
        *,
        backoff_initial_s: float,
        backoff_max_s: float,
        on_round: Callable[[], None] | None = None,
    ) -> None:
        """Publish until `stop` is set, then drain what is pending (bounded by the delivery timeout).

        `on_round` is called as each round begins, so a supervisor can tell a stuck relay from a busy one.
        """
        delay = backoff_initial_s
        while not stop.is_set():
            if on_round is not None:
                on_round()
            try:
                published = self.publish_once()
                delay = backoff_initial_s
            except (*postgres.UNAVAILABLE, KafkaException) as exc:
                log.warning("outbox_relay_retry", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
                stop.wait(delay)
                delay = min(delay * 2, backoff_max_s)
                continue
            if published < self._batch_size:
                self.wake.wait(self._interval_s)
                self.wake.clear()
        self.drain(self._delivery_timeout_s)

    def drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline and self.publish_once() > 0:
                pass
        except (*postgres.UNAVAILABLE, KafkaException) as exc:
            log.warning("outbox_drain_incomplete", error=f"{type(exc).__name__}: {exc}")
        self._producer.flush(max(0.0, deadline - time.monotonic()))
