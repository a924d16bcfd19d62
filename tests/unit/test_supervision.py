"""The supervisor sees a background loop that died or stalled, names it, and asks the worker to stop."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import cast

from confluent_kafka import Producer
from psycopg_pool import ConnectionPool

from tests import factories
from tests.unit.fakes import FakeState, FakeUnitOfWork, FakeUnitOfWorkFactory
from worker.adapters.postgres import retention
from worker.adapters.relay import OutboxRelay
from worker.bootstrap import _sweep_forever
from worker.domain.events import CustomerNotification
from worker.domain.policy import ShopPolicy
from worker.entrypoints.supervision import Supervisor
from worker.service import commands
from worker.service.backoff import Backoff
from worker.service.handlers import SWEEP_ORDERS_PER_TRANSACTION, handle
from worker.service.ports import UnitOfWork


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_healthy_while_every_loop_comes_round() -> None:
    clock = Clock()
    supervisor = Supervisor(clock)
    relay = supervisor.heartbeat("outbox-relay", 120)
    for _ in range(10):
        clock.now += 60
        relay.beat()
        assert supervisor.check() is None


def test_a_loop_that_died_is_named_with_its_error() -> None:
    supervisor = Supervisor(Clock())
    relay = supervisor.heartbeat("outbox-relay", 120)

    def publish() -> None:
        raise RuntimeError("boom")

    thread = threading.Thread(target=supervisor.run_supervised("outbox-relay", relay, publish))
    thread.start()
    thread.join()
    assert supervisor.check() == "outbox-relay died (RuntimeError: boom)"


def test_a_loop_that_returned_on_its_own_counts_as_dead() -> None:
    supervisor = Supervisor(Clock())
    sweep = supervisor.heartbeat("sweep", 120)
    supervisor.run_supervised("sweep", sweep, lambda: None)()
    assert supervisor.check() == "sweep died (returned)"


def test_a_loop_stuck_past_its_bound_is_stalled() -> None:
    clock = Clock()
    supervisor = Supervisor(clock)
    supervisor.heartbeat("outbox-relay", 120).beat()
    sweep = supervisor.heartbeat("sweep", 420)
    clock.now += 119
    assert supervisor.check() is None
    clock.now += 2
    assert supervisor.check() == "outbox-relay made no progress for 121s (bound 120s)"
    sweep.beat()
    assert supervisor.check() is not None  # a failure sticks: the worker is on its way out


def test_loops_stopped_on_purpose_are_not_failures() -> None:
    clock = Clock()
    supervisor = Supervisor(clock)
    relay = supervisor.heartbeat("outbox-relay", 120)
    supervisor.stopping()
    supervisor.run_supervised("outbox-relay", relay, lambda: None)()
    clock.now += 1000
    assert supervisor.check() is None


def test_watch_reports_the_first_failure_once() -> None:
    supervisor = Supervisor(Clock())
    relay = supervisor.heartbeat("outbox-relay", 120)
    supervisor.run_supervised("outbox-relay", relay, lambda: None)()
    reported: list[str] = []
    supervisor.watch(threading.Event(), reported.append, every_s=0.01)
    assert reported == ["outbox-relay died (returned)"]


# ------------------------------------------------------------------ long work reports its progress


class SlowStore(FakeUnitOfWorkFactory):
    """Each transaction takes 40 s of the supervisor's clock; what the supervisor says is noted as each begins."""

    def __init__(self, state: FakeState, clock: Clock, supervisor: Supervisor) -> None:
        super().__init__(state)
        self.clock = clock
        self.supervisor = supervisor
        self.health: list[str | None] = []

    @contextmanager
    def __call__(self) -> Iterator[UnitOfWork]:
        self.clock.now += 40
        self.health.append(self.supervisor.check())
        with super().__call__() as uow:
            yield uow


def test_a_sweep_longer_than_its_bound_beats_after_each_transaction_and_stays_healthy() -> None:
    clock = Clock()
    supervisor = Supervisor(clock)
    beat = supervisor.heartbeat("sweep", 60)
    uow = FakeUnitOfWork()
    placed = (dt.datetime.now(dt.UTC) - dt.timedelta(days=8)).strftime("%Y-%m-%dT%H:%M")
    orders = 2 * SWEEP_ORDERS_PER_TRANSACTION + 1
    for i in range(orders):
        record = factories.order(f"O-{i}", placed, [("S", 1)])
        command = commands.command_for("backorder.OrderCreated", "backorder.OrderCreated", record)
        uow.lock_stock(["S"])
        handle(command, uow, ShopPolicy(), dt.datetime.now(dt.UTC))
    store = SlowStore(uow.state, clock, supervisor)
    stop = threading.Event()
    started = clock.now

    _sweep_forever(stop, store, ShopPolicy(), 0.001, on_events=stop.set, heartbeat=beat)

    updates = [
        e for e in store.state.outbox if isinstance(e, CustomerNotification) and e.type == "BACKORDER_STATUS_UPDATE"
    ]
    assert len(updates) == orders
    assert clock.now - started == 40 * (1 + 3)  # the listing and three chunks: 160 s, past the 60 s bound
    assert store.health == [None] * 4
    assert supervisor.check() is None


def test_a_purge_longer_than_the_relays_bound_beats_after_each_statement() -> None:
    clock = Clock()
    supervisor = Supervisor(clock)
    beat = supervisor.heartbeat("outbox-relay", 60)
    health: list[str | None] = []

    class Connection:
        """Each DELETE takes 40 s and removes a full chunk twice, then the rest."""

        def __init__(self) -> None:
            self.calls = 0

        def execute(self, sql: str, params: object) -> SimpleNamespace:
            clock.now += 40
            health.append(supervisor.check())
            self.calls += 1
            return SimpleNamespace(rowcount=retention.PURGE_CHUNK_ROWS if self.calls % 3 else 7)

    kept_for = retention.Retention(*(dt.timedelta(days=1),) * 4)
    relay = OutboxRelay(
        cast(ConnectionPool, None),
        cast(Producer, None),
        batch_size=1,
        interval_s=1.0,
        delivery_timeout_s=1.0,
        retention=kept_for,
    )
    relay.on_purge_progress = beat.beat
    conn = Connection()

    relay._purge(conn)

    assert conn.calls == 5 * 3  # five kinds, three statements each: 600 s in all
    assert health == [None] * 15
    assert supervisor.check() is None


def test_backoff_doubles_up_to_its_bound_with_jitter_and_starts_over_after_a_success() -> None:
    backoff = Backoff(0.5, 4.0, jitter=0.2)
    delays = [backoff.next() for _ in range(8)]
    assert delays[0] == 0.5
    assert all(0.8 * min(2 * a, 4.0) <= b <= min(2 * a, 4.0) for a, b in itertools.pairwise(delays))
    assert max(delays) <= 4.0 and delays[-1] >= 0.8 * 4.0 * 0.8
    backoff.reset()
    assert backoff.next() == 0.5
