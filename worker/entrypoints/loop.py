"""The consume loop: poll a batch -> handle it in one transaction -> store the offsets. Nothing more.

Offsets are stored only after the batch's transaction committed; librdkafka's background commit
then sends them, and a final synchronous commit happens on revocation and on shutdown. If the
process dies in between, the batch is delivered again and the handlers recognise it. A batch handled only in
part (the worker stopping between two of its transactions) has the offsets of the messages handled stored, and
the rest is consumed again.

The group rebalances incrementally (cooperative-sticky, or KIP-848's protocol): `on_assign` and
`on_revoke` receive only the partitions that move, and the others keep being consumed. Partitions
*lost* (the session expired, so another member may own them already) are dropped without a commit.
Closing is bounded: with the broker unreachable librdkafka's close can block for minutes, so it runs
in a thread of its own that shutdown stops waiting for.

While a batch is applied, the cycle collector is paused (see `collector_paused`).
"""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Protocol

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from worker.adapters.kafka import to_inbound
from worker.service.backoff import Backoff
from worker.service.batch import MessageResult
from worker.service.handlers import Outcome
from worker.service.messages import InboundMessage
from worker.service.ports import StoreConflict, StoreUnavailable

log = structlog.get_logger(__name__)
CONFLICT_RETRIES = 5  # a batch that lost a deadlock this many times in a row is treated as an outage

BatchHandler = Callable[[Sequence[InboundMessage]], list[MessageResult]]
BatchObserver = Callable[[Sequence[MessageResult], float], None]
RebalanceCallback = Callable[[Any, list[TopicPartition]], None]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector off for the block, then as it was before.

    What a batch makes (its orders' lines, fills, events) is freed by reference counting when the batch
    ends, but while the batch runs, each full collection walks all of it: a receipt that filled 100,000
    waiting lines ran 17 full collections, 3.9 of its 25 s. Cycles made meanwhile are collected after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class KafkaConsumer(Protocol):
    """What the loop uses of confluent_kafka.Consumer (a fake in the unit tests satisfies it too)."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None: ...
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]: ...
    def poll(self, timeout: float = -1) -> Message | None: ...
    def assignment(self) -> list[TopicPartition]: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
    def seek(self, partition: TopicPartition) -> None: ...
    def store_offsets(self, message: Message | None = None, offsets: list[TopicPartition] | None = None) -> None: ...
    def commit(self, *, asynchronous: Literal[False]) -> list[TopicPartition]: ...
    def close(self) -> None: ...


class ConsumeLoop:
    def __init__(
        self,
        consumer: KafkaConsumer,
        topics: Sequence[str],
        handle: BatchHandler,
        *,
        batch_size: int,
        batch_timeout_s: float,
        retry_initial_s: float,
        retry_max_s: float,
        on_batch: BatchObserver | None = None,
        on_store_retry: Callable[[], None] | None = None,
        on_conflict: Callable[[], None] | None = None,
        on_committed: Callable[[], None] | None = None,
        on_rebalance: Callable[[str], None] | None = None,
    ) -> None:
        self._consumer = consumer
        self._topics = list(topics)
        self._handle = handle
        self._batch_size = batch_size
        self._batch_timeout_s = batch_timeout_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._on_batch = on_batch
        self._on_store_retry = on_store_retry
        self._on_conflict = on_conflict
        self._on_committed = on_committed
        self._on_rebalance = on_rebalance
        self._running = True
        self.last_poll_monotonic = time.monotonic()
        self.last_progress_monotonic = self.last_poll_monotonic
        self.stop_requested_monotonic: float | None = None
        self.assigned: set[tuple[str, int]] = set()

    def progressed(self) -> None:
        """A part of the batch in hand was committed: the loop is alive though it has not polled."""
        self.last_progress_monotonic = time.monotonic()

    @property
    def idle_seconds(self) -> float:
        """Seconds since the loop last polled Kafka or committed part of a batch."""
        return time.monotonic() - max(self.last_poll_monotonic, self.last_progress_monotonic)

    @property
    def stopping(self) -> bool:
        """Asked to stop: the batch in hand stops between two of its transactions."""
        return not self._running

    def stop(self) -> None:
        """Ask the loop to finish the transaction in hand and return (safe from a signal handler): the messages of
        the batch not handled by then are consumed again."""
        if self.stop_requested_monotonic is None:
            self.stop_requested_monotonic = time.monotonic()
        self._running = False

    def run(self) -> None:
        self._consumer.subscribe(self._topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost)
        log.info("consuming", topics=self._topics)
        while self._running:
            polled = self._poll_batch()
            self.last_poll_monotonic = time.monotonic()
            messages = [m for m in polled if self._usable(m)]
            if not messages:
                continue
            inbound = [to_inbound(m) for m in messages]
            results = self._handle_until_stored(inbound)
            if results is None:
                break  # stopped while the database was down: nothing of this batch was committed
            if len(results) < len(inbound) and self._running:
                # The consumer is past the messages left: storing later offsets would skip them for good.
                raise RuntimeError(f"a batch handled in part ({len(results)} of {len(inbound)}) while not stopping")
            self._store_offsets(inbound[: len(results)])  # those handled: a prefix of the batch
            if self._on_committed is not None:
                self._on_committed()
        log.info("consumer_stopped")

    def _poll_batch(self) -> list[Message]:
        """Wait up to the batch timeout for a first message, then take what has already arrived.

        A batch is what came while the last one was handled: a steady stream is handled as it comes,
        never held back to fill a batch, and a backlog still goes in batches of `batch_size`.
        """
        polled = list(self._consumer.consume(num_messages=1, timeout=self._batch_timeout_s))
        if polled and self._batch_size > 1:
            polled += self._consumer.consume(num_messages=self._batch_size - 1, timeout=0)
        return polled

    def close(self, timeout_s: float) -> bool:
        """Commit the stored offsets and leave the group, waiting at most `timeout_s`.

        False if the broker did not let it finish in time: the offsets not committed are simply
        consumed again by whoever gets the partitions (what the database committed stays).
        """

        def commit_and_close() -> None:
            try:
                self._commit()
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer_close_failed", error=str(exc))

        closer = threading.Thread(target=commit_and_close, name="consumer-close", daemon=True)
        closer.start()
        closer.join(max(0.0, timeout_s))
        if closer.is_alive():
            log.warning("consumer_close_abandoned", waited_s=round(timeout_s, 2))
            return False
        log.info("consumer_closed")
        return True

    def _usable(self, message: Message) -> bool:
        err = message.error()
        if err is None:
            return True
        if err.fatal():
            raise KafkaException(err)
        log.warning("consumer_error", error=err.str(), code=err.code())
        return False

    def _handle_until_stored(self, inbound: list[InboundMessage]) -> list[MessageResult] | None:
        backoff = Backoff(self._retry_initial_s, self._retry_max_s)
        paused = False
        conflicts = 0
        while True:
            started = time.monotonic()
            try:
                with collector_paused():
                    results = self._handle(inbound)
            except StoreUnavailable as exc:
                if isinstance(exc, StoreConflict) and conflicts < CONFLICT_RETRIES:
                    conflicts += 1  # another worker won a deadlock: go again at once
                    log.info("batch_conflict_retry", error=str(exc), attempt=conflicts, batch=len(inbound))
                    if self._on_conflict is not None:
                        self._on_conflict()
                    time.sleep(random.uniform(0.0, 0.05 * conflicts))
                    continue
                delay = backoff.next()
                log.warning("database_unavailable", error=str(exc), retry_in_s=round(delay, 2), batch=len(inbound))
                if not self._back_off(delay, paused):
                    return None
                paused = True
                continue
            elapsed = time.monotonic() - started
            if paused:
                self._consumer.resume(self._consumer.assignment())
            if self._on_batch is not None and results:  # a batch stopped before its first message: nothing done
                self._on_batch(results, elapsed)
            counts = {o.value: sum(1 for r in results if r.outcome is o) for o in Outcome}
            log.info("batch_handled", messages=len(results), seconds=round(elapsed, 4), **counts)
            return results

    def _back_off(self, delay: float, paused: bool) -> bool:
        """Pause every partition (once) and wait `delay` while staying in the group; False if asked to stop."""
        if self._on_store_retry is not None:
            self._on_store_retry()
        if not paused:
            self._consumer.pause(self._consumer.assignment())
        return self._wait_alive(delay)

    def _wait_alive(self, seconds: float) -> bool:
        """Wait while staying in the group: poll with every partition paused; False if asked to stop."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self._running:
                return False
            message = self._consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
            self.last_poll_monotonic = time.monotonic()
            if message is not None and message.error() is None:
                # A partition assigned during the wait delivered: put the message back for later.
                held = to_inbound(message)
                self._consumer.seek(TopicPartition(held.topic, held.partition, held.offset))
                self._consumer.pause([TopicPartition(held.topic, held.partition)])
        return self._running

    def _store_offsets(self, messages: list[InboundMessage]) -> None:
        if not messages:
            return
        next_offsets: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic, m.partition)
            next_offsets[key] = max(next_offsets.get(key, 0), m.offset + 1)
        try:
            self._consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()])
        except KafkaException as exc:  # revoked meanwhile: the new owner re-reads, the handlers dedupe
            log.warning("offset_store_failed", error=str(exc))

    def _commit(self) -> None:
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offset_commit_failed", error=str(exc))

    def _assigned(self, consumer: object, partitions: list[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        if self._on_rebalance is not None:
            self._on_rebalance("assign")

    def _revoked(self, consumer: object, partitions: list[TopicPartition]) -> None:
        log.info("partitions_revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        self._commit()  # while the partitions are still ours: the next owner starts after what we handled
        self.assigned -= {(p.topic, p.partition) for p in partitions}
        if self._on_rebalance is not None:
            self._on_rebalance("revoke")

    def _lost(self, consumer: object, partitions: list[TopicPartition]) -> None:
        # Another member may own them already: committing could move its offsets; it re-reads instead.
        log.warning("partitions_lost", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        self.assigned -= {(p.topic, p.partition) for p in partitions}
        if self._on_rebalance is not None:
            self._on_rebalance("lost")
