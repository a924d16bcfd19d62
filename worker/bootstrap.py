"""The one module that knows every concrete class: builds the worker from its settings and runs it."""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

import psycopg
import structlog
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from worker.adapters.avro import AvroCodec, EventSerializer
from worker.adapters.http import HttpEndpoints
from worker.adapters.kafka import (
    GroupProtocol,
    admin_config,
    choose_group_protocol,
    consumer_config,
    producer_config,
)
from worker.adapters.metrics import Metrics, StateRefresher
from worker.adapters.postgres.common import open_pool, transaction
from worker.adapters.postgres.migrations import Migration, migrate, pending_migrations
from worker.adapters.postgres.read import PostgresReadModel, StateReader
from worker.adapters.postgres.retention import Retention
from worker.adapters.postgres.unit_of_work import PostgresStore, PostgresUnitOfWorkFactory, snapshot
from worker.adapters.relay import REFUSAL_REASONS, OutboxRelay
from worker.adapters.schema_registry import avro_codec
from worker.domain.events import BackorderStatusChanged, CustomerNotification, FulfillmentRequested
from worker.domain.policy import ShopPolicy
from worker.entrypoints.loop import ConsumeLoop
from worker.entrypoints.supervision import Heartbeat, Supervisor
from worker.service.batch import MessageResult, handle_batch
from worker.service.book import Book
from worker.service.handlers import sweep_once
from worker.service.messages import InboundMessage
from worker.service.ports import ReadModel, StateFigures, Store, StoreUnavailable, UnitOfWork, UnitOfWorkFactory
from worker.settings import Settings

log = structlog.get_logger(__name__)
KAFKA_LOG = logging.getLogger("librdkafka")


class SchemaNotMigrated(RuntimeError):
    pass


class WorkerUnhealthy(RuntimeError):
    """A background loop died or stalled: the worker stopped so that its supervisor starts a fresh one."""


class ShutdownDeadline:
    """One bound for the whole shutdown, counted from the stop request (SIGTERM) or from the first ask."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._deadline: float | None = None

    def start(self, since: float | None = None) -> None:
        if self._deadline is None:
            self._deadline = (since if since is not None else time.monotonic()) + self._seconds

    def remaining(self) -> float:
        self.start()
        assert self._deadline is not None
        return max(0.0, self._deadline - time.monotonic())


PROMISE_KEEP_ALIVE_S = 5  # the promise API's idle keep-alive connections close after this long


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def event_serializer(settings: Settings, codec: AvroCodec) -> EventSerializer:
    return EventSerializer(
        codec,
        {
            FulfillmentRequested: settings.topic_fulfillment_requested,
            CustomerNotification: settings.topic_customer_notification,
            BackorderStatusChanged: settings.topic_backorder_status,
        },
    )


def migrate_database(settings: Settings) -> list[Migration]:
    """Apply the migrations the configured database lacks; the ones applied now."""
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        return migrate(conn)


@contextlib.contextmanager
def _operator_pool(settings: Settings) -> Iterator[ConnectionPool]:
    """One connection to the configured, migrated database, for an operator command."""
    pool = open_pool(settings.database_url.get_secret_value(), 1, 1, name="backorder-worker-cli")
    try:
        _require_schema(pool)
        yield pool
    finally:
        pool.close()


@contextlib.contextmanager
def open_store(settings: Settings) -> Iterator[PostgresUnitOfWorkFactory]:
    """Units of work on the configured database, for the operator commands that write (sweep)."""
    with _operator_pool(settings) as pool:
        yield PostgresUnitOfWorkFactory(
            pool, event_serializer(settings, avro_codec(settings)), settings.topic_dead_letter
        )


@contextlib.contextmanager
def open_read_model(settings: Settings) -> Iterator[ReadModel]:
    """The read side of the configured database (what is committed), for the operator commands that look."""
    with _operator_pool(settings) as pool, pool.connection() as conn:
        yield PostgresReadModel(conn)


@contextlib.contextmanager
def what_if(settings: Settings) -> Iterator[tuple[UnitOfWork, ReadModel]]:
    """A unit of work that is always rolled back, and a read model inside that same transaction: it sees
    what the unit of work has written so far (a simulation reads back the decisions it has just made)."""
    with _operator_pool(settings) as pool, transaction(pool, rollback=True) as conn:
        serializer = event_serializer(settings, avro_codec(settings))
        yield Book(PostgresStore(conn, serializer, settings.topic_dead_letter)), PostgresReadModel(conn)


def _group_protocol(settings: Settings) -> GroupProtocol:
    """The protocol to consume with: BACKORDER_GROUP_PROTOCOL's, or for `auto` the one the brokers allow (logged,
    as a warning when the broker could not be asked or refused a KIP-848 group's session)."""
    if settings.group_protocol == "classic":
        return "classic"
    choice = choose_group_protocol(settings, AdminClient(admin_config(settings)))
    report = log.warning if choice.trouble else log.info
    report("group_protocol_chosen", group=settings.group_id, protocol=choice.protocol, why=choice.why)
    return choice.protocol


def _kafka_error(err: KafkaError) -> None:
    log.warning("kafka_client_error", error=err.str(), code=err.code(), fatal=err.fatal())


def run_worker(settings: Settings) -> None:
    """Consume, allocate and publish until SIGTERM or SIGINT, then drain and stop."""
    codec = avro_codec(settings)
    metrics = Metrics()
    shop = settings.shop_policy()
    supervisor = Supervisor()
    deadline = ShutdownDeadline(settings.shutdown_timeout_seconds)
    with contextlib.ExitStack() as resources:
        pool = open_pool(settings.database_url.get_secret_value(), settings.db_pool_min_size, settings.db_pool_max_size)
        resources.callback(lambda: pool.close(timeout=max(0.1, deadline.remaining())))
        _require_schema(pool)
        factory = PostgresUnitOfWorkFactory(pool, event_serializer(settings, codec), settings.topic_dead_letter)

        # The backlog state behind /metrics: read by one thread on its own connection, never per scrape.
        state_reader = StateReader(settings.database_url.get_secret_value())
        resources.callback(state_reader.close)
        state_beat = supervisor.heartbeat("state-refresh", settings.state_refresh_seconds + settings.loop_stall_seconds)

        def read_state() -> StateFigures:
            state_beat.beat()  # a read begins: one stuck longer than the bound is a stalled loop
            return state_reader.read()

        state = StateRefresher(read_state, settings.state_refresh_seconds)
        state.refresh()
        stop_state = threading.Event()
        state_thread = threading.Thread(
            target=supervisor.run_supervised("state-refresh", state_beat, lambda: state.run(stop_state)),
            name="state-refresh",
            daemon=True,
        )
        state_thread.start()

        def stop_state_refresh() -> None:  # its read ends before its connection is closed (the callback above)
            stop_state.set()
            state_thread.join(timeout=max(0.1, deadline.remaining()))

        resources.callback(stop_state_refresh)
        metrics.watch_state(state)
        metrics.watch_pool(pool.get_stats)

        # Shutdown, in the order the callbacks run: stop accepting HTTP requests, commit and close the
        # consumer, stop the sweep, drain the relay, then join what is left (HTTP handler threads), each
        # step with what remains of BACKORDER_SHUTDOWN_TIMEOUT_SECONDS.
        join_last: list[Callable[[], object]] = []
        resources.callback(lambda: [join() for join in join_last])

        stop_relay = threading.Event()
        relay: OutboxRelay | None = None
        if settings.relay_enabled:
            producer = Producer({**producer_config(settings), "error_cb": _kafka_error, "logger": KAFKA_LOG})
            relay = OutboxRelay(
                pool,
                producer,
                batch_size=settings.relay_batch_size,
                batch_bytes=settings.relay_batch_bytes,
                interval_s=settings.relay_interval_seconds,
                delivery_timeout_s=settings.relay_delivery_timeout_seconds,
                retention=Retention(
                    parked_outbox=dt.timedelta(hours=settings.outbox_parked_retention_hours),
                    dead_letters=dt.timedelta(days=settings.dead_letter_retention_days),
                    pending_cancellations=dt.timedelta(days=settings.pending_cancellation_retention_days),
                ),
                on_published=metrics.outbox_published,
                on_refused=metrics.outbox_refused,
            )
            metrics.outbound_topics(
                (*settings.outbound_topics, settings.topic_dead_letter),
                REFUSAL_REASONS,
            )
            relay_beat = supervisor.heartbeat("outbox-relay", settings.loop_stall_seconds)
            running_relay = relay

            def publish_until_stopped() -> None:
                running_relay.run(
                    stop_relay,
                    backoff_initial_s=settings.db_retry_initial_seconds,
                    backoff_max_s=settings.db_retry_max_seconds,
                    on_round=relay_beat.beat,
                    drain_s=deadline.remaining,
                )

            relay_thread = threading.Thread(
                target=supervisor.run_supervised("outbox-relay", relay_beat, publish_until_stopped),
                name="outbox-relay",
                daemon=True,
            )
            relay_thread.start()

            def stop_relay_thread() -> None:
                stop_relay.set()
                running_relay.wake.set()
                relay_thread.join(deadline.remaining())

            resources.callback(stop_relay_thread)
        else:
            log.warning("outbox_relay_disabled", reason="BACKORDER_RELAY_ENABLED=false")

        if settings.sweep_interval_seconds > 0:
            stop_sweeps = threading.Event()
            # The sweep comes round once per interval: its bound is the interval plus the stall bound.
            sweep_beat = supervisor.heartbeat("sweep", settings.sweep_interval_seconds + settings.loop_stall_seconds)
            wake_relay = relay.wake.set if relay is not None else None

            def sweep_until_stopped() -> None:
                _sweep_forever(
                    stop_sweeps,
                    factory,
                    shop,
                    settings.sweep_interval_seconds,
                    wake_relay,
                    sweep_beat,
                    on_failure=metrics.sweep_failed,
                )

            sweeper = threading.Thread(
                target=supervisor.run_supervised("sweep", sweep_beat, sweep_until_stopped),
                name="sweep",
                daemon=True,
            )
            sweeper.start()

            # A sweep stops between two of its transactions. It is joined before the relay drains, so that
            # what its last transaction emitted is published now (a transaction still running after 5 s
            # is left to finish on its own: its events wait in the outbox for the next relay).
            def stop_sweeper() -> None:
                stop_sweeps.set()
                sweeper.join(min(5.0, deadline.remaining()))

            resources.callback(stop_sweeper)

        protocol = _group_protocol(settings)
        metrics.group_protocol(protocol)
        consumer = Consumer(
            {
                **consumer_config(settings, protocol),
                "error_cb": _kafka_error,
                "logger": KAFKA_LOG,
                "stats_cb": metrics.consumer_statistics,
            }
        )
        expected = settings.inbound_topics

        def handle(messages: Sequence[InboundMessage]) -> list[MessageResult]:
            return handle_batch(
                messages,
                decoder=codec,
                expected_records=expected,
                unit_of_work=factory,
                shop=shop,
                now=utc_now(),
                on_progress=loop.progressed,
                lines_per_transaction=settings.transaction_max_lines,
                stopping=lambda: loop.stopping,
            )

        loop = ConsumeLoop(
            consumer,
            list(expected),
            handle,
            batch_size=settings.batch_size,
            batch_timeout_s=settings.batch_timeout_seconds,
            retry_initial_s=settings.db_retry_initial_seconds,
            retry_max_s=settings.db_retry_max_seconds,
            on_batch=metrics.batch_handled,
            on_store_retry=metrics.database_retries.inc,
            on_conflict=metrics.conflicts.inc,
            on_committed=relay.wake.set if relay is not None else None,
            on_rebalance=lambda kind: metrics.rebalances.labels(kind).inc(),
        )
        resources.callback(lambda: loop.close(deadline.remaining()))
        # Whatever stops the loop (signal, unhealthy loop, an error), the loops it feeds stop with it.
        resources.callback(supervisor.stopping)

        stop_watching = threading.Event()
        resources.callback(stop_watching.set)
        threading.Thread(
            target=supervisor.watch, name="supervisor", daemon=True, args=(stop_watching, lambda _why: loop.stop())
        ).start()

        def live() -> tuple[bool, str]:
            failure = supervisor.check()
            if failure is not None:
                return False, failure
            idle = loop.idle_seconds
            return idle < settings.liveness_seconds, f"last poll or commit {idle:.1f}s ago"

        def ready() -> tuple[bool, str]:
            try:
                with pool.connection(timeout=1.0) as conn:
                    conn.execute("SELECT 1")
            except Exception as exc:  # any failure means: not ready
                return False, f"database: {type(exc).__name__}"
            if not loop.assigned:
                return False, "no partitions assigned"
            return True, f"{len(loop.assigned)} partitions assigned"

        endpoints = HttpEndpoints(
            settings.metrics_host, settings.metrics_port, metrics.registry, live=live, ready=ready
        )
        endpoints.start()
        resources.callback(endpoints.stop_accepting)
        join_last.append(lambda: endpoints.stop(deadline.remaining()))
        log.info(
            "http_listening", host=settings.metrics_host, port=endpoints.port, paths=["/metrics", "/healthz", "/readyz"]
        )

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("stopping", signal=signal.Signals(signum).name)
            loop.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        log.info("worker_started", group_id=settings.group_id, relay=settings.relay_enabled)
        # What start-up made (modules, clients, compiled schemas) lives as long as the process: out of the
        # cycle collector's sight, a full collection walks only what batches keep, not all of it again
        # (at 1,000 orders/s: 9-10 full collections in 45 s took 307-335 ms, up to 80 ms each; frozen,
        # 12 took 14 ms, up to 2.3 ms).
        gc.freeze()
        try:
            loop.run()
        finally:
            deadline.start(loop.stop_requested_monotonic)
            supervisor.stopping()
    log.info("worker_stopped")
    if supervisor.failure is not None:
        raise WorkerUnhealthy(supervisor.failure)


def _sweep_forever(
    stop: threading.Event,
    factory: UnitOfWorkFactory,
    shop: ShopPolicy,
    interval_s: float,
    on_events: Callable[[], None] | None,
    heartbeat: Heartbeat | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> None:
    """The time-driven work (status updates, stale backorders), one instance at a time across the group.

    A sweep beats `heartbeat` as it begins and after each of its transactions (a bounded number of
    orders each), so a long sweep over a big backlog is progress, not a stall."""
    beat = heartbeat.beat if heartbeat is not None else None
    while not stop.wait(interval_s):
        if beat is not None:
            beat()
        try:
            sent = sweep_once(
                factory, shop, utc_now(), wait=False, on_progress=beat, until=stop.is_set, on_failure=on_failure
            )
        except StoreUnavailable as exc:
            log.warning("sweep_postponed", error=str(exc))
            continue
        except Exception:  # the next sweep may succeed; the consumer must go on meanwhile
            log.exception("sweep_failed")
            if on_failure is not None:
                on_failure("listing")
            continue
        if sent:
            log.info("swept", events=sent)
            if on_events is not None:
                on_events()


def _require_schema(pool: ConnectionPool) -> None:
    with pool.connection(timeout=60.0) as conn:
        pending = pending_migrations(conn)
    if pending:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
        raise SchemaNotMigrated(f"the database lacks migrations {names}: run `backorder-worker migrate` first")


# ----------------------------------------------------------------------------- the promise API


def _promise_pool(settings: Settings, size: int) -> ConnectionPool:
    """A small pool of its own for promises, whose statements give up after BACKORDER_PROMISE_TIMEOUT_SECONDS;
    a connection is waited for as long. (Each promise's transaction is READ ONLY: see `snapshot`.)"""
    url = settings.database_url.get_secret_value()
    timeout_ms = max(1, int(settings.promise_timeout_seconds * 1000))
    given = conninfo_to_dict(url).get("options") or ""
    options = f"{given} -c statement_timeout={timeout_ms}".strip()
    return open_pool(
        url, size, size, "backorder-worker-promise", timeout=settings.promise_timeout_seconds, options=options
    )


@contextlib.contextmanager
def promise_snapshots(
    settings: Settings, size: int
) -> Iterator[Callable[[], contextlib.AbstractContextManager[Store]]]:
    """Read-only snapshots of the configured, migrated database: each call opens one (a REPEATABLE READ READ
    ONLY transaction that is rolled back) on a pool of `size` connections."""
    # The handler's decisions on a snapshot are what-ifs, not news: "allocated" in this process's log would
    # mislead (and cost time at hundreds of promises a second). Warnings and errors still show.
    service_log = logging.getLogger("worker.service")
    if service_log.getEffectiveLevel() < logging.WARNING:
        service_log.setLevel(logging.WARNING)
    pool = _promise_pool(settings, size)
    try:
        _require_schema(pool)
        yield lambda: snapshot(pool)
    finally:
        pool.close()


def serve_promises(settings: Settings) -> None:
    """Serve the promise API (uvicorn) until SIGTERM or SIGINT; requests in flight are finished first."""
    import uvicorn

    from worker.entrypoints.api import create_app, head_bound
    from worker.service.promise import QueueCopies

    with promise_snapshots(settings, settings.promise_pool_size) as snapshots:
        copies = QueueCopies(settings.promise_cache_lines) if settings.promise_cache_lines else None
        app = create_app(
            snapshots,
            settings.shop_policy(),
            utc_now,
            timeout_seconds=settings.promise_timeout_seconds,
            copies=copies,
        )
        config = uvicorn.Config(
            app,
            host=settings.promise_host,
            port=settings.promise_port,
            limit_concurrency=settings.promise_max_concurrency,
            # A whole request head within the keep-alive timeout plus the promise timeout of opening or of the last
            # response: an idle keep-alive connection still closes at the keep-alive timeout, first.
            http=head_bound(PROMISE_KEEP_ALIVE_S + settings.promise_timeout_seconds),
            timeout_keep_alive=PROMISE_KEEP_ALIVE_S,
            timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout_seconds)),
            access_log=False,  # 200 requests a second are not news; errors are logged
            log_config=None,  # uvicorn's loggers go through the root logger configured at the entry point
            lifespan="off",
            server_header=False,
        )
        # uvicorn stops on SIGTERM or SIGINT and then raises the signal again for the handler it found:
        # this one, so that a requested stop exits with 0, as `run` does.
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, lambda signum, _frame: log.info("stopping", signal=signal.Signals(signum).name))
        log.info("promise_api_listening", host=settings.promise_host, port=settings.promise_port)
        uvicorn.Server(config).run()
    log.info("promise_api_stopped")
