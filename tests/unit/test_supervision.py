"""The supervisor sees a background loop that died or stalled, names it, and asks the worker to stop."""

from __future__ import annotations

import threading

from worker.entrypoints.supervision import Supervisor


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
