"""The consume loop against a scripted consumer: offsets, cooperative rebalances, database waits, bounded close."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal

import pytest
from confluent_kafka import Message, TopicPartition

from worker.entrypoints.loop import CONFLICT_RETRIES, ConsumeLoop, KafkaConsumer, RebalanceCallback
from worker.service.batch import MessageResult
from worker.service.handlers import Outcome
from worker.service.messages import InboundMessage
from worker.service.ports import StoreConflict, StoreUnavailable

TOPIC = "order-created"


def message(partition: int, offset: int) -> Message:
    return Message(topic=TOPIC, partition=partition, offset=offset, key=b"k", value=b"v", timestamp=(1, 1000))


class FakeConsumer:
    """Plays back batches; records what the loop asks of it. `on_consume` runs before each consume."""

    def __init__(self, batches: Sequence[list[Message]]) -> None:
        self.batches = list(batches)
        self.on_assign: RebalanceCallback | None = None
        self.on_revoke: RebalanceCallback | None = None
        self.on_lost: RebalanceCallback | None = None
        self.held: list[TopicPartition] = []
        self.paused: set[tuple[str, int]] = set()
        self.stored: list[tuple[str, int, int]] = []
        self.commits = 0
        self.closed = False
        self.close_blocks: threading.Event | None = None  # close() waits for it, as librdkafka's can
        self.seeks: list[tuple[str, int, int]] = []
        self.polled: list[Message] = []
        self.on_consume: Callable[[], None] | None = None
        self.consumed: list[tuple[int, float]] = []  # (num_messages, timeout) of each consume

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None:
        self.on_assign, self.on_revoke, self.on_lost = on_assign, on_revoke, on_lost

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        """What has arrived, up to `num_messages`: the scripted batches arrive one at a time."""
        self.consumed.append((num_messages, timeout))
        if self.on_consume is not None and timeout != 0:
            self.on_consume()
        if not self.batches:
            return []
        taken, self.batches[0] = self.batches[0][:num_messages], self.batches[0][num_messages:]
        if not self.batches[0]:
            self.batches.pop(0)
        return taken

    def poll(self, timeout: float = -1) -> Message | None:
        return self.polled.pop(0) if self.polled else None

    def assignment(self) -> list[TopicPartition]:
        return list(self.held)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(p.topic, p.partition) for p in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(p.topic, p.partition) for p in partitions}

    def seek(self, partition: TopicPartition) -> None:
        self.seeks.append((partition.topic, partition.partition, partition.offset))

    def store_offsets(self, message: Message | None = None, offsets: list[TopicPartition] | None = None) -> None:
        self.stored += [(p.topic, p.partition, p.offset) for p in offsets or []]

    def commit(self, *, asynchronous: Literal[False]) -> list[TopicPartition]:
        self.commits += 1
        return []

    def close(self) -> None:
        if self.close_blocks is not None:
            self.close_blocks.wait()
        self.closed = True

    # The group, as librdkafka's cooperative protocol drives it: only the partitions that move.
    def assign(self, *partitions: int) -> None:
        moved = [TopicPartition(TOPIC, p) for p in partitions]
        assert self.on_assign is not None
        self.on_assign(self, moved)
        self.held += moved

    def revoke(self, *partitions: int, lost: bool = False) -> None:
        moved = [TopicPartition(TOPIC, p) for p in partitions]
        callback = self.on_lost if lost else self.on_revoke
        assert callback is not None
        callback(self, moved)
        self.held = [p for p in self.held if p.partition not in partitions]


def processed(messages: Sequence[InboundMessage]) -> list[MessageResult]:
    return [MessageResult(m, Outcome.PROCESSED) for m in messages]


def make_loop(
    consumer: KafkaConsumer, handle: Callable[[Sequence[InboundMessage]], list[MessageResult]]
) -> ConsumeLoop:
    return ConsumeLoop(
        consumer,
        [TOPIC],
        handle,
        batch_size=10,
        batch_timeout_s=0.01,
        retry_initial_s=0.01,
        retry_max_s=0.02,
    )


def stop_when_drained(consumer: FakeConsumer, loop: ConsumeLoop) -> None:
    def check() -> None:
        if not consumer.batches:
            loop.stop()

    consumer.on_consume = check


def test_offsets_are_stored_after_the_batch_is_handled() -> None:
    consumer = FakeConsumer([[message(0, 4), message(0, 5), message(1, 9)]])
    handled: list[list[int]] = []

    def handle(messages: Sequence[InboundMessage]) -> list[MessageResult]:
        assert consumer.stored == []  # nothing stored before the transaction
        handled.append([m.offset for m in messages])
        return processed(messages)

    loop = make_loop(consumer, handle)
    stop_when_drained(consumer, loop)
    loop.run()
    assert handled == [[4, 5, 9]]
    assert sorted(consumer.stored) == [(TOPIC, 0, 6), (TOPIC, 1, 10)]


def test_a_batch_stopped_part_way_stores_the_offsets_of_what_it_handled_only() -> None:
    """Asked to stop while a batch is applied, the handler returns the results of a prefix of it (the rest is left
    to be consumed again): only those offsets are stored, and the loop polls no more."""
    consumer = FakeConsumer([[message(0, 4), message(1, 9), message(0, 5), message(1, 10)], [message(0, 6)]])
    handled: list[int] = []

    def handle(messages: Sequence[InboundMessage]) -> list[MessageResult]:
        loop.stop()  # SIGTERM while the batch's first transaction runs
        assert loop.stopping
        handled.extend(m.offset for m in messages)
        return processed(messages[:2])

    loop = make_loop(consumer, handle)
    assert not loop.stopping
    loop.run()
    assert handled == [4, 9, 5, 10]  # one batch, no other polled after the stop
    assert sorted(consumer.stored) == [(TOPIC, 0, 5), (TOPIC, 1, 10)]


def test_a_batch_handled_in_part_without_a_stop_is_a_defect_that_stops_the_loop_storing_nothing() -> None:
    consumer = FakeConsumer([[message(0, 4), message(0, 5)], [message(0, 6)]])
    loop = make_loop(consumer, lambda messages: processed(messages[:1]))
    with pytest.raises(RuntimeError, match="handled in part"):
        loop.run()
    assert consumer.stored == []  # offset 5 was not handled: nothing after it may be stored


def test_a_batch_stopped_before_its_first_transaction_stores_nothing() -> None:
    consumer = FakeConsumer([[message(0, 4)]])

    def handle(messages: Sequence[InboundMessage]) -> list[MessageResult]:
        loop.stop()
        return []

    loop = make_loop(consumer, handle)
    loop.run()
    assert consumer.stored == []


def test_incremental_rebalance_moves_only_the_named_partitions() -> None:
    consumer = FakeConsumer([])
    loop = make_loop(consumer, processed)
    consumer.subscribe([TOPIC], loop._assigned, loop._revoked, loop._lost)
    consumer.assign(0, 1, 2)
    consumer.assign(3)  # a cooperative assignment adds to what is held
    assert loop.assigned == {(TOPIC, 0), (TOPIC, 1), (TOPIC, 2), (TOPIC, 3)}
    consumer.revoke(1)
    assert loop.assigned == {(TOPIC, 0), (TOPIC, 2), (TOPIC, 3)}
    assert consumer.commits == 1  # a revoked partition's offsets are committed while it is still ours


def test_lost_partitions_are_dropped_without_a_commit() -> None:
    consumer = FakeConsumer([])
    loop = make_loop(consumer, processed)
    consumer.subscribe([TOPIC], loop._assigned, loop._revoked, loop._lost)
    consumer.assign(0, 1)
    consumer.revoke(0, lost=True)
    assert loop.assigned == {(TOPIC, 1)}
    assert consumer.commits == 0  # another member may own it already


def test_the_loop_subscribes_with_a_lost_callback() -> None:
    consumer = FakeConsumer([])
    loop = make_loop(consumer, processed)
    consumer.on_consume = loop.stop
    loop.run()
    assert consumer.on_lost is not None and consumer.on_revoke is not None


def test_database_outage_pauses_and_holds_a_partition_assigned_meanwhile() -> None:
    consumer = FakeConsumer([[message(0, 1)]])
    attempts = 0

    def handle(messages: Sequence[InboundMessage]) -> list[MessageResult]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            consumer.assign(5)  # arrives during the wait, unpaused, as an incremental assignment does
            consumer.polled.append(message(5, 70))
            raise StoreUnavailable("down")
        return processed(messages)

    loop = make_loop(consumer, handle)
    consumer.subscribe([TOPIC], loop._assigned, loop._revoked, loop._lost)
    consumer.assign(0)
    stop_when_drained(consumer, loop)
    loop.run()
    assert attempts == 2
    assert consumer.seeks == [(TOPIC, 5, 70)]  # the message polled meanwhile is read again later
    assert consumer.paused == set()  # everything resumed once the database answered
    assert consumer.stored == [(TOPIC, 0, 2)]


def test_stop_during_a_database_outage_stores_nothing() -> None:
    consumer = FakeConsumer([[message(0, 1)]])

    def handle(messages: Sequence[InboundMessage]) -> list[MessageResult]:
        loop.stop()
        raise StoreUnavailable("down")

    loop = make_loop(consumer, handle)
    loop.run()
    assert consumer.stored == []
    assert loop.stop_requested_monotonic is not None


def test_close_commits_and_leaves_the_group() -> None:
    consumer = FakeConsumer([])
    loop = make_loop(consumer, processed)
    assert loop.close(5.0) is True
    assert consumer.closed and consumer.commits == 1


def test_close_gives_up_at_its_bound_when_the_client_hangs() -> None:
    consumer = FakeConsumer([])
    consumer.close_blocks = threading.Event()  # as librdkafka's close with the broker unreachable
    loop = make_loop(consumer, processed)
    started = time.monotonic()
    try:
        assert loop.close(0.3) is False
        assert time.monotonic() - started < 2.0
    finally:
        consumer.close_blocks.set()


def run_losing_deadlocks(times: int) -> tuple[int, list[set[tuple[str, int]]], FakeConsumer]:
    """One batch whose transaction loses a deadlock `times` times in a row: (attempts, pauses, consumer)."""
    consumer = FakeConsumer([[message(0, 1)]])
    attempts = 0

    def handle(messages: Sequence[InboundMessage]) -> list[MessageResult]:
        nonlocal attempts
        attempts += 1
        if attempts <= times:
            raise StoreConflict("DeadlockDetected: deadlock detected")
        return processed(messages)

    loop = make_loop(consumer, handle)
    consumer.subscribe([TOPIC], loop._assigned, loop._revoked, loop._lost)
    consumer.assign(0)
    paused: list[set[tuple[str, int]]] = []
    consumer.pause = lambda partitions: paused.append({(p.topic, p.partition) for p in partitions})  # type: ignore[method-assign]
    stop_when_drained(consumer, loop)
    loop.run()
    return attempts, paused, consumer


def test_a_lost_deadlock_is_retried_at_once_without_pausing() -> None:
    attempts, paused, consumer = run_losing_deadlocks(2)
    assert attempts == 3 and paused == []  # not an outage: nothing paused, no backoff
    assert consumer.stored == [(TOPIC, 0, 2)]


def test_a_batch_that_keeps_losing_deadlocks_backs_off_as_for_an_outage() -> None:
    attempts, paused, consumer = run_losing_deadlocks(CONFLICT_RETRIES + 1)
    assert attempts == CONFLICT_RETRIES + 2 and paused == [{(TOPIC, 0)}]
    assert consumer.stored == [(TOPIC, 0, 2)]


def test_what_has_arrived_is_handled_at_once_not_held_back_to_fill_a_batch() -> None:
    consumer = FakeConsumer([[message(0, 1), message(0, 2), message(0, 3)], [message(0, 4)]])
    handled: list[list[int]] = []

    def handle(messages: Sequence[InboundMessage]) -> list[MessageResult]:
        handled.append([m.offset for m in messages])
        return processed(messages)

    loop = make_loop(consumer, handle)
    stop_when_drained(consumer, loop)
    loop.run()
    assert handled == [[1, 2, 3], [4]]
    # Only the wait for a first message may last the batch timeout; the rest is taken as it is.
    assert consumer.consumed[:2] == [(1, 0.01), (9, 0)]


def test_the_cycle_collector_is_paused_while_a_batch_is_applied_and_only_then() -> None:
    consumer = FakeConsumer([[message(0, 1)]])
    seen: list[bool] = []
    polled_with_collector: list[bool] = []
    consumer.on_consume = lambda: polled_with_collector.append(gc.isenabled())

    def handle(messages: Sequence[InboundMessage]) -> list[MessageResult]:
        seen.append(gc.isenabled())
        if len(seen) == 1:
            raise StoreUnavailable("down")  # the collector comes back on the way out too
        loop.stop()
        return processed(messages)

    loop = make_loop(consumer, handle)
    assert gc.isenabled()
    loop.run()
    assert seen == [False, False]  # the failed attempt, then the one that went through
    assert polled_with_collector and all(polled_with_collector)
    assert gc.isenabled()


def test_a_collector_turned_off_by_the_program_stays_off() -> None:
    consumer = FakeConsumer([[message(0, 1)]])
    loop = make_loop(consumer, processed)
    stop_when_drained(consumer, loop)
    gc.disable()
    try:
        loop.run()
        assert not gc.isenabled()
    finally:
        gc.enable()
