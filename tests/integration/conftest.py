"""Integration fixtures: one real Kafka broker and one real PostgreSQL for the session.

Each test gets a world of its own (`deployment`): its own database, its own topics and consumer
group, and worker processes started as a user would start them (`python -m worker run`).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import make_conninfo

from worker.adapters.avro import AvroCodec
from worker.adapters.postgres.migrations import migrate
from worker.adapters.postgres.read import state_figures
from worker.adapters.postgres.totals import FILL_BUCKETS_SECONDS
from worker.service.ports import Histogram

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))

import localstack  # noqa: E402

TOPIC_KINDS = {
    "order-created": "ORDER_CREATED",
    "inventory-received": "INVENTORY_RECEIVED",
    "order-cancelled": "ORDER_CANCELLED",
    "product-policy": "PRODUCT_POLICY",
    "restock-expected": "RESTOCK_EXPECTED",
    "shipment-dispatched": "SHIPMENT_DISPATCHED",
    "fulfillment-requested": "FULFILLMENT_REQUESTED",
    "customer-notification": "CUSTOMER_NOTIFICATION",
    "backorder-status": "BACKORDER_STATUS",
    "dlq": "DEAD_LETTER",
}
# The headers the contract puts on every dead letter.
DLQ_HEADERS = (
    "dlq.original.topic",
    "dlq.original.partition",
    "dlq.original.offset",
    "dlq.error.class",
    "dlq.error.message",
    "dlq.failed_at",
)
RECORD_OF = {
    "order-created": "backorder.OrderCreated",
    "inventory-received": "backorder.InventoryReceived",
    "order-cancelled": "backorder.OrderCancelled",
    "product-policy": "backorder.ProductPolicy",
    "restock-expected": "backorder.RestockExpected",
    "shipment-dispatched": "backorder.ShipmentDispatched",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


# Outbox rows the relay has still to publish (none parked).
UNPUBLISHED = "SELECT count(*) FROM outbox WHERE published_at IS NULL AND failed_at IS NULL"


@pytest.fixture(scope="session")
def stack() -> Iterator[localstack.Endpoints]:
    with localstack.local_stack() as endpoints:
        yield endpoints


@pytest.fixture(scope="session")
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


@pytest.fixture
def own_broker() -> Iterator[localstack.KafkaBroker]:
    """A Kafka broker this test may stop or freeze."""
    with tempfile.TemporaryDirectory(prefix="backorder-kafka-") as workdir:
        broker = localstack.KafkaBroker(Path(workdir) / "kafka", heap="512m")
        broker.start()
        yield broker
        broker.thaw()
        broker.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes | None
    headers: dict[str, bytes]
    value: dict[str, Any] | None


def _headers(msg: Message) -> dict[str, bytes]:
    raw = msg.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else list(raw)
    return {k: v.encode() if isinstance(v, str) else (v or b"") for k, v in pairs}


def days_ago(days: float) -> str:
    """The time `days` days before now, as an ISO string (an order's placed_at, say)."""
    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).isoformat()


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60.0, every_s: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path, metrics_port: int) -> None:
        self.log_path = log_path
        self.metrics_port = metrics_port
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_for("the worker's /metrics endpoint", self._metrics_answer, timeout_s=60)

    def _metrics_answer(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            self.metrics_text()
            return True
        except OSError:
            return False

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels`."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def assignment(self) -> list[str]:
        """The partitions this worker holds now, from its log (incremental rebalancing: only what moves)."""
        held: list[str] = []
        for entry in json_lines(self.log()):
            if entry.get("event") == "partitions_assigned":
                held += [p for p in entry["partitions"] if p not in held]
            elif entry.get("event") in ("partitions_revoked", "partitions_lost"):
                held = [p for p in held if p not in entry["partitions"]]
        return held

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logged(self, event: str) -> list[dict[str, Any]]:
        """The worker's JSON log entries of `event`."""
        return [entry for entry in json_lines(self.log()) if entry.get("event") == event]

    def terminate(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout_s)
        self._log.close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._log.close()


class Deployment:
    """One test's world: a database, topics and a consumer group nobody else uses."""

    def __init__(self, stack: localstack.Endpoints, codec: AvroCodec, tmp_path: Path, partitions: int) -> None:
        self.codec = codec
        self.tmp_path = tmp_path
        self.bootstrap = stack.kafka_bootstrap_servers
        tag = uuid.uuid4().hex[:10]
        self.database = f"t_{tag}"
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self.database_url = make_conninfo(stack.database_url, dbname=self.database)
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            migrate(conn)
        self.topics = {kind: f"t{tag}.{kind}" for kind in TOPIC_KINDS}
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in self.topics.values()]
        )
        for future in futures.values():
            future.result(timeout=30)
        self.group_id = f"backorder-worker-{tag}"
        self.workers: list[WorkerProcess] = []
        self._producer: Producer | None = Producer({"bootstrap.servers": self.bootstrap})

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKORDER_")}
        env.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                "DATABASE_URL": self.database_url,
                "BACKORDER_GROUP_ID": self.group_id,
                "BACKORDER_METRICS_HOST": "127.0.0.1",
                "BACKORDER_LOG_FORMAT": "json",
                "BACKORDER_BATCH_TIMEOUT_SECONDS": "0.2",
                "BACKORDER_DB_RETRY_INITIAL_SECONDS": "0.2",
                "BACKORDER_DB_RETRY_MAX_SECONDS": "2",
                "BACKORDER_KAFKA_CONSUMER_CONFIG": '{"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}',
                "BACKORDER_STATE_REFRESH_SECONDS": "1",  # the backlog's gauges and totals a test waits for
            }
        )
        env.update({f"BACKORDER_TOPIC_{suffix}": self.topics[kind] for kind, suffix in TOPIC_KINDS.items()})
        env.update(overrides)
        return env

    def start_worker(self, **overrides: str) -> WorkerProcess:
        port = localstack.free_port()
        env = self.env(BACKORDER_METRICS_PORT=str(port), **overrides)
        worker = WorkerProcess(env, self.tmp_path / f"worker-{len(self.workers) + 1}.log", port)
        self.workers.append(worker)
        return worker

    # ------------------------------------------------------------------ Kafka in and out

    def produce(self, kind: str, record: dict[str, Any], key: str | None = None) -> bytes:
        value = self.codec.encode(RECORD_OF[kind], record)
        default_key = record.get("order_id") or record.get("sku")
        self.produce_raw(kind, (key or default_key or "").encode(), value)
        return value

    def produce_raw(
        self, kind: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        assert self._producer is not None
        sent: list[tuple[str, str | bytes | None]] = list(headers or [])
        self._producer.produce(self.topics[kind], key=key, value=value, headers=sent)
        assert self._producer.flush(30) == 0, "the test producer could not deliver"

    def read(
        self, kind: str, *, count: int | None = None, timeout_s: float = 60.0, settle_s: float = 1.5
    ) -> list[Received]:
        """Everything on a topic from the beginning: until `count` arrived, or until quiet for `settle_s`."""
        topic = self.topics[kind]
        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": f"reader-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
        try:
            metadata = consumer.list_topics(topic, timeout=10)
            partitions = metadata.topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            out: list[Received] = []
            deadline = time.monotonic() + timeout_s
            quiet_since = time.monotonic()
            while time.monotonic() < deadline:
                if count is not None and len(out) >= count:
                    break
                if count is None and time.monotonic() - quiet_since > settle_s:
                    break
                msg = consumer.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue
                quiet_since = time.monotonic()
                value = msg.value()
                decoded = None
                if kind != "dlq":
                    decoded = dict(self.codec.decode(value)[1])
                out.append(
                    Received(
                        topic,
                        msg.partition() or 0,
                        msg.offset() or 0,
                        msg.key(),
                        value,
                        _headers(msg),
                        decoded,
                    )
                )
            if count is not None:
                assert len(out) >= count, f"expected {count} messages on {kind}, got {len(out)}"
            return out
        finally:
            consumer.close()

    # ------------------------------------------------------------------ database

    def db(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url, autocommit=True)

    def totals_and_aggregates(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The running totals behind the state figures, and the same counted over every line: equal when every
        transaction kept the totals right."""
        with self.db() as conn:
            figures = state_figures(conn)
            kept = {
                "units": (figures.units_allocated, figures.units_reserved, figures.units_rejected),
                "backordered": figures.backordered_lines,
                "cancelled": figures.cancelled_lines_by_reason,
                "orders": figures.orders_by_outcome,
                "fills": (figures.fill_to_allocation, figures.fill_to_shipment),
            }
            [units] = conn.execute(
                """SELECT coalesce(sum(quantity_allocated), 0), coalesce(sum(quantity_reserved), 0),
                          coalesce(sum(quantity_rejected), 0) FROM order_line"""
            ).fetchall()
            [(backordered,)] = conn.execute("SELECT count(*) FROM order_line WHERE backordered").fetchall()
            cancelled = conn.execute(
                "SELECT cancel_reason, count(*) FROM order_line WHERE cancel_reason IS NOT NULL GROUP BY 1"
            ).fetchall()
            orders = conn.execute(
                "SELECT outcome, count(*) FROM customer_order WHERE outcome IS NOT NULL GROUP BY 1"
            ).fetchall()
            fills = []
            for column in ("filled_at", "shipped_at"):
                seconds = [
                    float(d)
                    for (d,) in conn.execute(
                        f"""SELECT extract(epoch FROM {column} - placed_at) FROM order_line
                            WHERE backordered AND {column} IS NOT NULL"""
                    ).fetchall()
                ]
                fills.append(
                    Histogram(
                        [(bound, sum(1 for d in seconds if d <= bound)) for bound in FILL_BUCKETS_SECONDS],
                        sum(math.floor(d * 1000 + 0.5) for d in seconds) / 1000,
                        len(seconds),
                    )
                )
        counted = {
            "units": tuple(int(u) for u in units),
            "backordered": int(backordered),
            "cancelled": {reason: int(n) for reason, n in cancelled},
            "orders": {outcome: int(n) for outcome, n in orders},
            "fills": tuple(fills),
        }
        return kept, counted

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.db() as conn:
            return conn.execute(sql, params or None).fetchall()

    def add_waiting_line(self, order_id: str, sku: str, quantity: int, unit_price_minor: int) -> None:
        """An order of one waiting line written straight into the database, past every input check."""
        with self.db() as conn:
            conn.execute(
                """INSERT INTO customer_order (order_id, customer_id, customer_tier, shipping_service, currency,
                       placed_at, event_id, order_units)
                   VALUES (%s, 'C', 'STANDARD', 'STANDARD', 'USD', now(), 'e', %s)""",
                (order_id, quantity),
            )
            conn.execute(
                """INSERT INTO order_line (order_id, line_id, sku, product_name, quantity, unit_price_minor, status,
                       placed_at, updated_at) VALUES (%s, 'L', %s, 'p', %s, %s, 'BACKORDERED', now(), now())""",
                (order_id, sku, quantity, unit_price_minor),
            )

    def cli(self, *args: str) -> str:
        """Run `backorder-worker ARGS` against this world; its standard output."""
        done = subprocess.run(
            [sys.executable, "-m", "worker", *args],
            env=self.env(BACKORDER_LOG_LEVEL="WARNING"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"backorder-worker {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def stock(self, sku: str) -> tuple[int, int, int, int]:
        """(available, received, allocated, reserved) units of an SKU."""
        rows = self.query(
            """SELECT s.available, s.received_total,
                      (SELECT coalesce(sum(quantity_allocated), 0) FROM order_line l WHERE l.sku = s.sku),
                      (SELECT coalesce(sum(quantity_reserved), 0) FROM order_line l WHERE l.sku = s.sku)
               FROM stock_level s WHERE s.sku = %s""",
            sku,
        )
        assert rows, f"no stock row for {sku}"
        return rows[0]

    def close(self) -> None:
        self._producer = None  # released now, not after the broker has gone
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.kill()


@pytest.fixture
def deployment(
    stack: localstack.Endpoints, codec: AvroCodec, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    partitions = getattr(request, "param", 3)
    world = Deployment(stack, codec, tmp_path, partitions)
    yield world
    world.close()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for worker in world.workers:
            sys.stderr.write(f"--- {worker.log_path.name} (last lines)\n{worker.log()[-4000:]}\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def json_lines(text: str) -> list[dict[str, Any]]:
    import json

    out = []
    for line in text.splitlines():
        if re.match(r"^\s*\{", line):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
