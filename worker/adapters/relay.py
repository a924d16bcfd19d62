"""The outbox relay: publishes committed outbox rows to Kafka and deletes them only once Kafka has them.

One relay in the whole group works at a time (a transaction-scoped advisory lock), which keeps the
events of each key in the order they were written. The producer is idempotent, so its own retries
do not duplicate; a relay killed between Kafka's acknowledgement and the delete publishes those rows
again after restart, with the same event ids, which consumers deduplicate.

A row Kafka refuses for good because of what it is (too large, an invalid record) is parked: stamped
`failed_at` with the error, counted, never retried, and it blocks nothing behind it. Rows acknowledged
in a round are deleted whatever else happened in it, so they are never sent twice because of a
neighbour. Every other failure is the environment's (a missing ACL, an outbound topic not created yet):
it leaves the rows to a later round, is counted as a publish failure and logged, and a round in which
Kafka took nothing is retried with backoff. Parking those would silently drop every event of the topic
until someone noticed. A broker that does not answer leaves the round's messages queued in the producer,
in order (none times out), and no round begins until they are answered (`publish_once`).

A round reads at most `batch_size` rows and stops at `batch_bytes` of keys and values (the row that
crosses it included), which bounds what it holds in Python and in the producer's queue.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from psycopg_pool import ConnectionPool

from worker.adapters.postgres import outbox
from worker.adapters.postgres.common import is_unavailable
from worker.adapters.postgres.retention import Retention, purge
from worker.service.backoff import Backoff

log = structlog.get_logger(__name__)

# (acknowledged per topic, not acknowledged, seconds from decision to ack, seconds from inbound event to ack)
PublishedCallback = Callable[[dict[str, int], int, list[float], list[float]], None]
# (topic, reason): one row refused for good and parked
RefusedCallback = Callable[[str, str], None]

# Errors the row itself causes, which no change around it cures, by the bounded `reason` they are counted
# under. Not here, because fixing the deployment cures them: TOPIC_AUTHORIZATION_FAILED (an ACL),
# UNKNOWN_TOPIC_OR_PART, _UNKNOWN_TOPIC, _UNKNOWN_PARTITION (a topic not created yet), TOPIC_EXCEPTION (a
# topic name configured wrong), _INVALID_ARG (how the worker calls the producer, the same for every row),
# INVALID_MSG (a corrupt batch on the way, retriable) and INVALID_TIMESTAMP (clocks or the topic's config).
REFUSALS: dict[int, str] = {
    KafkaError.MSG_SIZE_TOO_LARGE: "too_large",
    KafkaError.RECORD_LIST_TOO_LARGE: "too_large",
    KafkaError.INVALID_RECORD: "invalid",
}
REFUSAL_REASONS = tuple(sorted(set(REFUSALS.values())))
PURGE_INTERVAL_S = 60.0


def _retryable(exc: psycopg.Error | KafkaException) -> bool:
    """A database that is down (as the consume loop judges it) or a Kafka error the producer survives.

    A fatal producer error leaves a producer that can never publish again: not retryable.
    """
    if isinstance(exc, psycopg.Error):
        return is_unavailable(exc)
    err = exc.args[0] if exc.args else None
    return not (isinstance(err, KafkaError) and err.fatal())


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
    not_acknowledged: int = 0  # left to the next round, `failed` included
    failed: dict[tuple[str, str], int] = field(default_factory=dict)  # (topic, error name) -> rows left by it
    producer_error: KafkaException | None = None  # the producer failed as a whole: the round stopped there

    def fail(self, topic: str, err: KafkaError | None, rows: int = 1) -> None:
        """`rows` of `topic` not acknowledged, for a reason that is not theirs: left to a later round."""
        self.not_acknowledged += rows
        name = err.name() if err is not None else "NOT_ACKNOWLEDGED"
        self.failed[topic, name] = self.failed.get((topic, name), 0) + rows


class _Answers:
    """Where the delivery reports of a round's messages go: the round's result, or, for the messages the producer
    still held when the round ended (Kafka did not answer within its wait), a result of their own, which the next
    round takes (`OutboxRelay._unanswered`)."""

    def __init__(self) -> None:
        self.result = Round()

    def report(self, row: outbox.OutboxRow, err: KafkaError | None, msg: Message) -> None:
        result = self.result
        if err is None:
            result.delivered.append(row.outbox_id)
            topic = msg.topic() or row.topic
            result.per_topic[topic] = result.per_topic.get(topic, 0) + 1
            return
        reason = refusal_reason(err)
        if reason is None:
            result.fail(row.topic, err)
        else:
            result.refused[row.outbox_id] = (row.topic, reason, err.str())


class OutboxRelay:
    def __init__(
        self,
        pool: ConnectionPool,
        producer: Producer,
        *,
        batch_size: int,
        batch_bytes: int = 16 * 1024 * 1024,
        interval_s: float,
        delivery_timeout_s: float,
        retention: Retention,
        on_published: PublishedCallback | None = None,
        on_refused: RefusedCallback | None = None,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._batch_size = batch_size
        self._batch_bytes = batch_bytes
        self._full = False  # the last round stopped at a bound: more rows may be waiting
        self._stalled = False  # the last round had rows and Kafka took none of them
        self._interval_s = interval_s
        self._delivery_timeout_s = delivery_timeout_s
        self._retention = retention
        self._on_published = on_published
        self._on_refused = on_refused
        self._last_purge = 0.0
        # A round whose messages the producer still held unanswered when it ended, and where their answers go: no
        # round begins until the producer has none left (see `publish_once`).
        self._unanswered: tuple[Sequence[outbox.OutboxRow], _Answers] | None = None
        self.wake = threading.Event()

    def publish_once(self) -> int:
        """Publish one batch of pending rows; returns how many Kafka acknowledged.

        A message never times out in the producer (`message.timeout.ms` 0, see `kafka.producer_config`): one that
        did would leave a gap that later messages of its partition fill, and sent again it would come after them, an
        order's events out of order. So the messages of a round that Kafka has not answered when the round's wait
        ends stay with the producer, which sends them, in order, once Kafka answers; until then no round begins
        (their rows would be handed over twice), and the round that follows deletes the rows answered late."""
        rows: Sequence[outbox.OutboxRow] = []
        result = Round()
        self._full = self._stalled = False  # a round that does not get the lock waits its interval
        unanswered = self._unanswered
        if unanswered is not None and self._producer.flush(self._delivery_timeout_s + 5):  # delivery reports run here
            self._stalled = True  # still unanswered: nothing more is handed over
            return 0
        late = None if unanswered is None else (unanswered[0], unanswered[1].result)
        with self._pool.connection() as conn:
            with conn.transaction():
                if late is not None:
                    self._settle(conn, late[1])  # the rows answered late
                locked = outbox.try_lock_relay(conn)
                if locked:
                    rows = outbox.unpublished(conn, self._batch_size, self._batch_bytes)
                if rows:
                    answers = self._publish(rows)
                    result = answers.result
                    if result.not_acknowledged and len(self._producer):
                        answers.result = Round()  # the answers still to come: a later round settles them
                        self._unanswered = (rows, answers)
                    self._settle(conn, result)
            if unanswered is not None and self._unanswered is unanswered:
                self._unanswered = None  # settled (committed)
            if locked:
                self._purge(conn)
        if late is not None:
            self._report(*late)
        if not locked:
            return 0
        self._report(rows, result)
        read_bytes = sum(len(row.key or b"") + len(row.value or b"") for row in rows)
        self._full = len(rows) >= self._batch_size or read_bytes >= self._batch_bytes
        self._stalled = bool(rows) and not result.delivered and bool(result.not_acknowledged)
        if result.producer_error is not None:
            raise result.producer_error
        return len(result.delivered)

    @staticmethod
    def _settle(conn: Any, result: Round) -> None:
        outbox.remove_published(conn, result.delivered)
        outbox.park(conn, {i: f"{reason}: {error}" for i, (_, reason, error) in result.refused.items()})

    def publish(self, rows: Sequence[outbox.OutboxRow]) -> Round:
        """Hand `rows` to the producer and wait for Kafka's answers (up to the delivery timeout)."""
        return self._publish(rows).result

    def _publish(self, rows: Sequence[outbox.OutboxRow]) -> _Answers:
        answers = _Answers()
        result = answers.result
        report = answers.report
        held: set[str] = set()  # topics whose rows wait for a later round from here on, to keep their order
        for row in rows:
            if row.topic in held:
                result.fail(row.topic, None)
                continue
            try:
                self._produce(row, report)
            except KafkaException as exc:  # refused before it was sent, e.g. larger than message.max.bytes
                err = exc.args[0]
                if not isinstance(err, KafkaError) or err.fatal():
                    result.producer_error = exc
                    break
                reason = refusal_reason(err)
                if reason is None:  # e.g. a topic unknown to the cluster: the topic's rows wait, the others go
                    result.fail(row.topic, err)
                    held.add(row.topic)
                else:
                    result.refused[row.outbox_id] = (row.topic, reason, err.str())
        pending = self._producer.flush(self._delivery_timeout_s + 5)  # delivery reports run in here
        result.not_acknowledged += pending
        return answers

    def _produce(
        self, row: outbox.OutboxRow, report: Callable[[outbox.OutboxRow, KafkaError | None, Message], None]
    ) -> None:
        on_delivery = functools.partial(report, row)
        while True:
            try:
                if row.headers:
                    headers: list[tuple[str, str | bytes | None]] = list(row.headers)
                    self._producer.produce(
                        row.topic, key=row.key, value=row.value, headers=headers, on_delivery=on_delivery
                    )
                else:  # no argument at all: an empty list cost the producer 0.5 us a message
                    self._producer.produce(row.topic, key=row.key, value=row.value, on_delivery=on_delivery)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.5)

    def _report(self, rows: Sequence[outbox.OutboxRow], result: Round) -> None:
        for outbox_id, (topic, reason, error) in result.refused.items():
            log.error("outbox_row_refused", outbox_id=outbox_id, topic=topic, reason=reason, error=error)
            if self._on_refused is not None:
                self._on_refused(topic, reason)
        for (topic, error), count in result.failed.items():  # at most a few per round: topics x error kinds
            log.warning("outbox_publish_failed", topic=topic, error=error, rows=count)
        if result.not_acknowledged or result.producer_error is not None:
            log.warning(
                "outbox_publish_incomplete",
                delivered=len(result.delivered),
                not_acknowledged=result.not_acknowledged,
                error=str(result.producer_error) if result.producer_error else None,
            )
        if self._on_published is not None and rows:
            acked: Sequence[outbox.OutboxRow] = rows  # as many acknowledgements as rows: each row's (once at most)
            if len(result.delivered) < len(rows):
                delivered = set(result.delivered)
                acked = [row for row in rows if row.outbox_id in delivered]
            acknowledged = time.time()
            delays = [acknowledged - row.created_s for row in acked]
            latencies = [acknowledged - row.source_s for row in acked if row.source_s is not None]
            self._on_published(result.per_topic, result.not_acknowledged, delays, latencies)

    # Called as each purge statement ends (set by `run` to its `on_round`): a long purge is progress, not a stall.
    on_purge_progress: Callable[[], None] | None = None

    def _purge(self, conn: Any) -> None:
        """Apply the retentions, at most once a minute, outside the publishing transaction."""
        now = time.monotonic()
        if now - self._last_purge < PURGE_INTERVAL_S:
            return
        self._last_purge = now
        try:
            purged = {kind: n for kind, n in purge(conn, self._retention, self.on_purge_progress).items() if n}
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
        drain_s: Callable[[], float] | None = None,
    ) -> None:
        """Publish until `stop` is set, then drain what is pending for `drain_s()` seconds (asked when the
        drain begins: what is left of the shutdown) or else the delivery timeout.

        `on_round` is called as each round begins and as each purge statement ends, so a supervisor can
        tell a stuck relay from a busy one.
        """
        self.on_purge_progress = on_round
        backoff = Backoff(backoff_initial_s, backoff_max_s)
        while not stop.is_set():
            if on_round is not None:
                on_round()
            try:
                self.publish_once()
            except (psycopg.Error, KafkaException) as exc:
                if not _retryable(exc):
                    raise  # the thread dies, the supervisor stops the worker, a fresh one starts
                delay = backoff.next()
                log.warning("outbox_relay_retry", error=f"{type(exc).__name__}: {exc}", retry_in_s=round(delay, 2))
                stop.wait(delay)
                continue
            if self._stalled:  # Kafka took nothing (a missing topic or ACL, a broker away): not again at once
                delay = backoff.next()
                log.warning(
                    "outbox_relay_retry", error="no row of the round was acknowledged", retry_in_s=round(delay, 2)
                )
                stop.wait(delay)
                continue
            backoff.reset()
            if not self._full:
                self.wake.wait(self._interval_s)
                self.wake.clear()
        self.drain(drain_s() if drain_s is not None else self._delivery_timeout_s)

    def drain(self, timeout_s: float) -> None:
        """Publish what is pending for at most `timeout_s`: each round waits for Kafka only as long as is
        left (a round's rows not acknowledged by then stay and are published again later, with the same
        event ids)."""
        deadline = time.monotonic() + timeout_s
        delivery_timeout_s = self._delivery_timeout_s
        try:
            # A round waits for Kafka up to its delivery timeout plus 5 s: it is given what is left, and
            # none begins with 5 s or less left.
            while (left := deadline - time.monotonic()) > 5.0:
                self._delivery_timeout_s = min(delivery_timeout_s, left - 5.0)
                if self.publish_once() == 0:
                    break
        except (psycopg.Error, KafkaException) as exc:
            log.warning("outbox_drain_incomplete", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._delivery_timeout_s = delivery_timeout_s
        self._producer.flush(max(0.0, deadline - time.monotonic()))
