"""The relay's round with a fake producer, the dead letter's shape, and the state behind /metrics."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from prometheus_client import generate_latest
from psycopg import errors
from psycopg_pool import ConnectionPool

from worker.adapters import relay as relay_module
from worker.adapters.metrics import Metrics, StateRefresher
from worker.adapters.postgres import outbox
from worker.adapters.postgres.outbox import DEAD_LETTER_MAX_BYTES, ERROR_TEXT_MAX_BYTES, dead_letter_message, error_text
from worker.adapters.postgres.retention import Retention
from worker.adapters.relay import OutboxRelay
from worker.service.messages import InboundMessage
from worker.service.ports import Histogram, StateFigures

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class FakeMessage:
    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic


class FakeProducer:
    """Refuses values over `max_bytes` in produce(), as librdkafka does; answers the others at flush()."""

    def __init__(self, max_bytes: int = 1000, answers: dict[bytes, KafkaError] | None = None) -> None:
        self.max_bytes = max_bytes
        self.answers = answers or {}  # value -> the error its delivery report carries
        self.raise_on: dict[bytes, KafkaError] = {}  # value -> what produce() raises for it
        self.raise_on_topic: dict[str, KafkaError] = {}  # topic -> what produce() raises for its rows
        self.queued: list[tuple[str, bytes, Callable[[KafkaError | None, Any], None]]] = []
        self.unanswered: set[bytes] = set()  # values flush() leaves queued, unanswered
        self.sent: list[bytes] = []

    def produce(self, topic: str, *, key: Any, value: bytes, on_delivery: Any, headers: Any = None) -> None:
        if value in self.raise_on:
            raise KafkaException(self.raise_on[value])
        if topic in self.raise_on_topic:
            raise KafkaException(self.raise_on_topic[topic])
        if len(value) > self.max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.queued.append((topic, value, on_delivery))

    def flush(self, _timeout: float) -> int:
        """Answers what is queued, but for the values in `unanswered` (Kafka away for them): those stay queued."""
        left = []
        for topic, value, on_delivery in self.queued:
            if value in self.unanswered:
                left.append((topic, value, on_delivery))
                continue
            err = self.answers.get(value)
            if err is None:
                self.sent.append(value)
            on_delivery(err, FakeMessage(topic))
        self.queued = left
        return len(left)

    def poll(self, _timeout: float) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.queued)


def relay(producer: FakeProducer) -> OutboxRelay:
    return OutboxRelay(
        cast(ConnectionPool, None),  # publish() alone never touches the database
        cast(Producer, producer),
        batch_size=100,
        interval_s=1,
        delivery_timeout_s=1,
        retention=Retention(*(dt.timedelta(days=1),) * 4),
    )


def row(outbox_id: int, value: bytes, topic: str = "out") -> outbox.OutboxRow:
    return outbox.OutboxRow(outbox_id, topic, b"k", value, [], NOW.timestamp(), None)


def test_a_row_refused_in_produce_is_parked_and_the_rows_around_it_are_delivered() -> None:
    producer = FakeProducer(max_bytes=1000)
    rows = [row(1, b"a"), row(2, b"x" * 1001), row(3, b"b")]

    result = relay(producer).publish(rows)

    assert result.delivered == [1, 3] and producer.sent == [b"a", b"b"]
    assert result.refused == {2: ("out", "too_large", "Broker: Message size too large")}
    assert result.producer_error is None and result.not_acknowledged == 0


def test_a_rounds_delays_are_those_of_the_rows_kafka_acknowledged() -> None:
    """From each acknowledged row's decision (and inbound event, where it has one) to the acknowledgement; the
    rows not acknowledged count in neither."""
    reported: list[tuple[list[float], list[float]]] = []
    publisher = relay(FakeProducer())
    publisher._on_published = lambda _topics, _failures, delays, latencies: reported.append((delays, latencies))
    ago = [time.time() - s for s in (10, 20, 30)]
    rows = [
        outbox.OutboxRow(1, "out", b"k", b"a", [], ago[0], ago[1]),
        outbox.OutboxRow(2, "out", b"k", b"b", [], ago[1], None),
        outbox.OutboxRow(3, "out", b"k", b"c", [], ago[2], ago[2]),
    ]

    publisher._report(rows, relay_module.Round(delivered=[3, 1], per_topic={"out": 2}))
    publisher._report(rows, relay_module.Round(delivered=[2, 3, 1], per_topic={"out": 3}))

    (some, some_caused), (every, every_caused) = reported
    assert [round(d) for d in sorted(some)] == [10, 30] and [round(d) for d in sorted(some_caused)] == [20, 30]
    assert [round(d) for d in sorted(every)] == [10, 20, 30] and [round(d) for d in sorted(every_caused)] == [20, 30]


def test_delivery_reports_tell_a_refusal_from_a_passing_failure() -> None:
    producer = FakeProducer(
        answers={
            b"auth": KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED),
            b"late": KafkaError(KafkaError._MSG_TIMED_OUT),
            b"big": KafkaError(KafkaError.MSG_SIZE_TOO_LARGE),
            b"bad": KafkaError(KafkaError.INVALID_RECORD),
        }
    )
    rows = [row(1, b"auth"), row(2, b"ok"), row(3, b"late"), row(4, b"big"), row(5, b"bad")]

    result = relay(producer).publish(rows)

    assert result.delivered == [2]
    assert {i: reason for i, (_, reason, _) in result.refused.items()} == {4: "too_large", 5: "invalid"}
    assert result.not_acknowledged == 2  # the unauthorised and the timed-out rows are left to a later round
    assert result.failed == {("out", "TOPIC_AUTHORIZATION_FAILED"): 1, ("out", "_MSG_TIMED_OUT"): 1}


# A missing ACL, an outbound topic not created yet, a topic name configured wrong, the worker's own call:
# fixed around the rows, not in them. Parking them would drop every event of the topic for good.
ENVIRONMENTAL = [
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.TOPIC_EXCEPTION,
    KafkaError._INVALID_ARG,
]


@pytest.mark.parametrize("code", ENVIRONMENTAL)
def test_an_environmental_answer_leaves_the_rows_for_a_later_round(code: int) -> None:
    producer = FakeProducer(answers={b"a": KafkaError(code), b"b": KafkaError(code)})

    result = relay(producer).publish([row(1, b"a"), row(2, b"b")])

    assert result.refused == {} and result.delivered == []
    assert result.not_acknowledged == 2
    assert result.failed == {("out", KafkaError(code).name()): 2}


@pytest.mark.parametrize("code", ENVIRONMENTAL)
def test_an_environmental_refusal_in_produce_holds_that_topic_and_lets_the_others_go(code: int) -> None:
    producer = FakeProducer()
    producer.raise_on_topic["missing"] = KafkaError(code)
    rows = [row(1, b"a", "missing"), row(2, b"b", "out"), row(3, b"c", "missing"), row(4, b"d", "out")]

    result = relay(producer).publish(rows)

    assert result.refused == {} and result.producer_error is None
    assert result.delivered == [2, 4] and producer.sent == [b"b", b"d"]
    assert result.not_acknowledged == 2
    assert result.failed == {("missing", KafkaError(code).name()): 1, ("missing", "NOT_ACKNOWLEDGED"): 1}


def test_a_broken_producer_stops_the_round_but_keeps_what_was_acknowledged() -> None:
    producer = FakeProducer()
    producer.raise_on[b"second"] = KafkaError(KafkaError._FATAL, fatal=True)
    rows = [row(1, b"first"), row(2, b"second"), row(3, b"third")]

    result = relay(producer).publish(rows)

    assert result.delivered == [1]  # deleted in any case: never published twice because of a neighbour
    assert result.refused == {}  # nothing parked for the producer's own fault
    assert result.producer_error is not None


class FakeConnection:
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class FakePool:
    @contextlib.contextmanager
    def connection(self) -> Iterator[FakeConnection]:
        yield FakeConnection()


class FakeOutbox:
    """The outbox functions over a list: the byte budget as `unpublished` applies it in SQL."""

    def __init__(self, rows: list[outbox.OutboxRow]) -> None:
        self.rows = rows
        self.reads: list[int] = []  # rows read per round

    def unpublished(self, _conn: Any, limit: int, max_bytes: int) -> list[outbox.OutboxRow]:
        taken: list[outbox.OutboxRow] = []
        before = 0
        for r in self.rows[:limit]:
            if before >= max_bytes:
                break
            taken.append(r)
            before += len(r.key or b"") + len(r.value or b"")
        self.reads.append(len(taken))
        return taken

    def remove_published(self, _conn: Any, ids: list[int]) -> None:
        self.rows = [r for r in self.rows if r.outbox_id not in ids]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(outbox, "try_lock_relay", lambda _conn: True)
        monkeypatch.setattr(outbox, "unpublished", self.unpublished)
        monkeypatch.setattr(outbox, "remove_published", self.remove_published)
        monkeypatch.setattr(outbox, "park", lambda _conn, _refused: None)
        monkeypatch.setattr(relay_module, "purge", lambda *_args: {})


def running_relay(producer: FakeProducer, *, batch_bytes: int, interval_s: float, seconds: float) -> None:
    relay = OutboxRelay(
        cast(ConnectionPool, FakePool()),
        cast(Producer, producer),
        batch_size=100,
        batch_bytes=batch_bytes,
        interval_s=interval_s,
        delivery_timeout_s=1,
        retention=Retention(*(dt.timedelta(days=1),) * 4),
    )
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), kwargs={"backoff_initial_s": 0.05, "backoff_max_s": 5})
    thread.start()
    time.sleep(seconds)
    stop.set()
    relay.wake.set()
    thread.join(10)


def test_rounds_stop_at_the_byte_budget_and_the_next_comes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    outbox = FakeOutbox([row(i, bytes([i]) * 999) for i in range(1, 11)])  # 1,000 bytes each with the key
    outbox.install(monkeypatch)
    producer = FakeProducer(max_bytes=10_000)

    running_relay(producer, batch_bytes=2_500, interval_s=0.5, seconds=0.3)

    assert outbox.reads[:4] == [3, 3, 3, 1]  # 2,000 bytes before the third row: it still comes
    assert [v[0] for v in producer.sent] == list(range(1, 11))  # all of them, in order, within one interval


def test_a_round_kafka_takes_nothing_of_is_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    outbox = FakeOutbox([row(1, b"a"), row(2, b"b")])
    outbox.install(monkeypatch)
    producer = FakeProducer(answers={v: KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED) for v in (b"a", b"b")})

    running_relay(producer, batch_bytes=1_000, interval_s=0.001, seconds=1.0)

    assert len(outbox.rows) == 2  # nothing parked, nothing lost
    assert 3 <= len(outbox.reads) <= 6  # 0.05, 0.1, 0.2, 0.4 s apart, not every 1 ms interval


def test_rows_kafka_has_not_answered_are_not_handed_over_again_while_the_producer_holds_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Their messages stay queued in order (none times out) and are sent once Kafka answers: before any row after
    them, each once; the round after deletes their rows."""
    store = FakeOutbox([row(1, b"a"), row(2, b"b"), row(3, b"c")])
    store.install(monkeypatch)
    producer = FakeProducer()
    producer.unanswered = {b"b", b"c"}
    relay = OutboxRelay(
        cast(ConnectionPool, FakePool()),
        cast(Producer, producer),
        batch_size=100,
        interval_s=1,
        delivery_timeout_s=1,
        retention=Retention(*(dt.timedelta(days=1),) * 4),
    )

    assert relay.publish_once() == 1
    assert [r.outbox_id for r in store.rows] == [2, 3] and len(producer.queued) == 2
    store.rows.append(row(4, b"d"))
    assert relay.publish_once() == 0  # Kafka still away: nothing read, nothing handed over again
    assert store.reads == [3] and len(producer.queued) == 2

    producer.unanswered.clear()  # Kafka answers
    assert relay.publish_once() == 1  # the round's own row: d
    assert producer.sent == [b"a", b"b", b"c", b"d"]  # in order, each once
    assert store.rows == [] and store.reads == [3, 1]  # b and c deleted before the round read the outbox


def test_a_relay_that_does_not_get_the_lock_waits_its_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeOutbox([row(i, b"x" * 10) for i in range(1, 4)])
    store.install(monkeypatch)
    locked = iter([True])  # the first round is full (it stops at the byte budget); then another relay works
    attempts: list[int] = []

    def try_lock(_conn: Any) -> bool:
        attempts.append(1)
        return next(locked, False)

    monkeypatch.setattr(outbox, "try_lock_relay", try_lock)
    running_relay(FakeProducer(max_bytes=10_000), batch_bytes=5, interval_s=0.1, seconds=0.5)
    assert len(attempts) <= 8  # one try per interval, not a spin


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (psycopg.OperationalError("connection refused"), True),
        (errors.AdminShutdown(), True),
        (errors.InsufficientPrivilege(), True),  # a broken deployment: wait for a fix, as the consume loop does
        (errors.NumericValueOutOfRange(), False),  # a defect of the relay's own: stop, a fresh worker starts
        (KafkaException(KafkaError(KafkaError._TRANSPORT)), True),
        (KafkaException(KafkaError(KafkaError._FATAL, fatal=True)), False),  # this producer can never publish
    ],
)
def test_which_failures_the_relay_retries(error: Exception, retried: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(_conn: Any) -> bool:
        raise error

    monkeypatch.setattr(outbox, "try_lock_relay", fail)
    relay = OutboxRelay(
        cast(ConnectionPool, FakePool()),
        cast(Producer, FakeProducer()),
        batch_size=10,
        batch_bytes=1_000,
        interval_s=0.01,
        delivery_timeout_s=1,
        retention=Retention(*(dt.timedelta(days=1),) * 4),
    )
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    if retried:
        relay.run(stop, backoff_initial_s=0.01, backoff_max_s=0.05)  # returns when stopped
    else:
        with pytest.raises(type(error)):
            relay.run(stop, backoff_initial_s=0.01, backoff_max_s=0.05)
        stop.set()


def message(value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> InboundMessage:
    return InboundMessage("orders", 2, 41, b"key", value, headers)


def test_a_producers_own_dlq_headers_are_renamed_so_the_workers_are_the_only_ones() -> None:
    original = (("trace-id", b"t-1"), ("dlq.error.class", b"forged"), ("dlq.original.offset", b"999"))

    key, value, headers = dead_letter_message(message(b"body", original), "InvalidEvent", "bad", NOW)

    assert (key, value) == (b"key", b"body")
    names = [name for name, _ in headers]
    for name in ("dlq.error.class", "dlq.original.offset", "dlq.error.message", "dlq.failed_at"):
        assert names.count(name) == 1, name
    assert dict(headers)["dlq.error.class"] == b"InvalidEvent"
    assert dict(headers)["dlq.original.offset"] == b"41"
    assert dict(headers)["original.dlq.error.class"] == b"forged"
    assert dict(headers)["trace-id"] == b"t-1"


def test_a_value_too_large_to_send_again_is_replaced_by_its_size_and_digest() -> None:
    big = b"\x07" * 950_000

    key, value, headers = dead_letter_message(message(big, (("trace-id", b"t"),)), "InvalidEvent", "too big", NOW)

    assert value is None and key == b"key"
    assert dict(headers)["dlq.value.omitted.bytes"] == b"950000"
    assert dict(headers)["dlq.value.sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert dict(headers)["trace-id"] == b"t"
    assert sum(len(n) + len(v) for n, v in headers) + len(key) < DEAD_LETTER_MAX_BYTES


def test_huge_original_headers_are_left_out_too() -> None:
    headers_in = tuple((f"h{i}", b"v" * 100_000) for i in range(10))

    key, value, headers = dead_letter_message(message(b"small", headers_in), "InvalidEvent", "x", NOW)

    assert value == b"small" and key == b"key"
    assert not any(name.startswith("h") for name, _ in headers)
    assert int(dict(headers)["dlq.headers.omitted.bytes"]) > DEAD_LETTER_MAX_BYTES


def test_error_text_is_bounded_and_safe_for_a_text_column() -> None:
    assert error_text("short") == "short"
    assert error_text("S\x00KU \udcff") == "S\\x00KU \\udcff"
    long = error_text("é" * 5000)
    assert len(long.encode()) <= ERROR_TEXT_MAX_BYTES
    assert long.endswith("... (10000 bytes)")


def figures(outbox_backlog: int) -> StateFigures:
    empty = Histogram([(1.0, 0)], 0.0, 0)
    return StateFigures(
        outbox_backlog=outbox_backlog,
        outbox_parked=0,
        outbox_oldest_age_seconds=0.0,
        open_backorder_lines=0,
        open_backorder_units=0,
        units_received=0,
        units_allocated=0,
        units_reserved=0,
        units_rejected=0,
        cancelled_lines_by_reason={},
        orders_by_outcome={},
        backordered_lines=0,
        open_backorder_orders=0,
        open_value_minor_by_currency={"USD": 2 * (2**63 - 1)},
        oldest_open_age_seconds=0.0,
        open_lines_expected_within_7_days=0,
        fill_to_allocation=empty,
        fill_to_shipment=empty,
        plan_steps_left=0,
        plan_oldest_age_seconds=0.0,
    )


def test_scrapes_read_the_last_refresh_and_never_the_database() -> None:
    reads: list[int] = []

    def read() -> StateFigures:
        reads.append(1)
        return figures(len(reads))

    metrics = Metrics()
    state = StateRefresher(read, interval_s=15)
    metrics.watch_state(state)
    state.refresh()
    for _ in range(8):
        text = generate_latest(metrics.registry).decode()

    assert len(reads) == 1
    assert "backorder_outbox_backlog 1.0" in text
    assert "backorder_state_query_ok 1.0" in text
    assert "backorder_state_age_seconds " in text
    assert 'backorder_open_value_minor{currency="USD"} 1.8446744073709552e+19' in text


def test_a_failed_refresh_hides_the_figures_and_says_so() -> None:
    def read() -> StateFigures:
        raise OSError("database down")

    metrics = Metrics()
    state = StateRefresher(read, interval_s=15)
    metrics.watch_state(state)
    state.refresh()
    text = generate_latest(metrics.registry).decode()

    assert "backorder_state_query_ok 0.0" in text
    assert "backorder_outbox_backlog" not in text
