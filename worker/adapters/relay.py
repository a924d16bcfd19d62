"""The outbox relay: publishes committed outbox rows to Kafka and stamps them only once Kafka has them.

One relay in the whole group works at a time (a transaction-scoped advisory lock), which keeps the
events of each key in the order they were written. The producer is idempotent, so its own retries
do not duplicate; a relay killed between Kafka's acknowledgement and the stamp publishes those rows
again after restart, with the same event ids, which consumers deduplicate.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from psycopg_pool import ConnectionPool

from worker.adapters import postgres

log = structlog.get_logger(__name__)

# (acknowledged per topic, not acknowledged, seconds from decision to ack, seconds from inbound event to ack)
PublishedCallback = Callable[[dict[str, int], int, list[float], list[float]], None]


class OutboxRelay:
    def __init__(
        self,
        pool: ConnectionPool,
        producer: Producer,
        *,
        batch_size: int,
        interval_s: float,
        delivery_timeout_s: float,
        retention: dt.timedelta,
        on_published: PublishedCallback | None = None,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._delivery_timeout_s = delivery_timeout_s
        self._retention = retention
        self._on_published = on_published
        self._last_purge = 0.0
        self.wake = threading.Event()

    def publish_once(self) -> int:
        """Publish one batch of pending rows; returns how many Kafka acknowledged."""
        with self._pool.connection() as conn, conn.transaction():
            if not postgres.try_lock_relay(conn):
                return 0
            rows = postgres.unpublished(conn, self._batch_size)
            if not rows:
                self._purge(conn)
                return 0
            delivered: list[int] = []
            written = {row.outbox_id: row.created_at for row in rows}
            caused = {row.outbox_id: row.source_time for row in rows if row.source_time is not None}
            failed: dict[str, int] = {}
            per_topic: dict[str, int] = {}

            def report(outbox_id: int, err: KafkaError | None, msg: Message) -> None:
                if err is None:
                    delivered.append(outbox_id)
                    topic = msg.topic() or ""
                    per_topic[topic] = per_topic.get(topic, 0) + 1
                else:
                    failed[err.str()] = failed.get(err.str(), 0) + 1

            for row in rows:
                self._produce(row, report)
            pending = self._producer.flush(self._delivery_timeout_s + 5)
            postgres.mark_published(conn, delivered)
        if failed or pending:
            log.warning("outbox_publish_incomplete", delivered=len(delivered), failed=failed, pending=pending)
        if self._on_published is not None:
            acknowledged = dt.datetime.now(dt.UTC)
            delays = [(acknowledged - written[i]).total_seconds() for i in delivered]
            latencies = [(acknowledged - caused[i]).total_seconds() for i in delivered if i in caused]
            self._on_published(per_topic, sum(failed.values()) + pending, delays, latencies)
        return len(delivered)

    def _produce(self, row: postgres.OutboxRow, report: Callable[[int, KafkaError | None, Message], None]) -> None:
        def on_delivery(err: KafkaError | None, msg: Message, outbox_id: int = row.outbox_id) -> None:
            report(outbox_id, err, msg)

        headers: list[tuple[str, str | bytes | None]] = list(row.headers)
        while True:
            try:
                self._producer.produce(
                    row.topic, key=row.key, value=row.value, headers=headers, on_delivery=on_delivery
                )
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.5)

    def _purge(self, conn: Any) -> None:
        now = time.monotonic()
        if now - self._last_purge < 60:
            return
        self._last_purge = now
        purged = postgres.purge_published(conn, self._retention)
        if purged:
            log.info("outbox_purged", rows=purged)

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
