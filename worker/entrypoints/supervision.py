"""Supervision of the worker's background loops (the outbox relay, the sweep).

A loop that died on an unexpected exception, or that has not come round for longer than its bound,
leaves the worker half-alive: events pile up in the outbox while the consume loop goes on. The
supervisor makes that visible (`/healthz` names the loop) and asks the worker to stop, so that it
exits non-zero and whoever runs it starts a fresh one.

A loop comes round often while it is healthy: the relay after every round of publishing, retrying or
idling (each bounded by its delivery timeout or backoff), the sweep after every sweep (its interval is
added to its bound). A dependency that is down (database, broker) therefore never counts as a stall:
the loops keep retrying and coming round; only a loop stuck inside one round does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


@dataclass
class Heartbeat:
    """What one background loop reports: that it came round, or how it ended."""

    clock: Clock = time.monotonic
    last_beat: float = field(default=0.0)
    ended: str | None = None  # why the loop ended ("RuntimeError: ..."), None while it runs

    def __post_init__(self) -> None:
        self.last_beat = self.clock()

    def beat(self) -> None:
        self.last_beat = self.clock()


@dataclass(frozen=True)
class _Watched:
    name: str
    heartbeat: Heartbeat
    allowed_gap_s: float


class Supervisor:
    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._watched: list[_Watched] = []
        self._stopping = False
        self.failure: str | None = None  # the first failure seen; it sticks

    def heartbeat(self, name: str, allowed_gap_s: float) -> Heartbeat:
        """A heartbeat for the loop `name`, unhealthy once it has not beaten for `allowed_gap_s`."""
        beat = Heartbeat(self._clock)
        self._watched.append(_Watched(name, beat, allowed_gap_s))
        return beat

    def run_supervised(self, name: str, heartbeat: Heartbeat, target: Callable[[], None]) -> Callable[[], None]:
        """`target` wrapped for a thread: how it ends is recorded in `heartbeat` instead of being lost."""

        def supervised() -> None:
            try:
                target()
            except BaseException as exc:  # anything at all: the thread is gone, health must say so
                heartbeat.ended = f"{type(exc).__name__}: {exc}"
                log.exception("loop_died", loop=name, error=heartbeat.ended)
                return
            heartbeat.ended = "returned"
            if not self._stopping:
                log.error("loop_ended", loop=name)

        return supervised

    def stopping(self) -> None:
        """Loops ending from now on are being stopped, not failing."""
        self._stopping = True

    def check(self) -> str | None:
        """None while every loop is healthy; else what is wrong, naming the loop (and remembered)."""
        if self.failure is not None:
            return self.failure
        if self._stopping:
            return None
        now = self._clock()
        for watched in self._watched:
            beat = watched.heartbeat
            if beat.ended is not None:
                self.failure = f"{watched.name} died ({beat.ended})"
            elif now - beat.last_beat > watched.allowed_gap_s:
                self.failure = (
                    f"{watched.name} made no progress for {now - beat.last_beat:.0f}s "
                    f"(bound {watched.allowed_gap_s:.0f}s)"
                )
            if self.failure is not None:
                return self.failure
        return None

    def watch(self, stop: threading.Event, on_failure: Callable[[str], None], every_s: float = 1.0) -> None:
        """Check every `every_s` until `stop` is set; call `on_failure` once with the first failure."""
        while not stop.wait(every_s):
            failure = self.check()
            if failure is not None:
                log.error("worker_unhealthy", reason=failure)
                on_failure(failure)
                return
