"""`make bench`: the performance figures of issue 9, measured in one run on one local stack.

Prints each figure as a `name: value` line with the machine's load average beside it
(`name: value  [load 1m 5m 15m]`). Benchmarks print figures; they assert nothing.

PostgreSQL is started with production durability (fsync, synchronous_commit and full_page_writes on).
Every scenario gets its own database on that server, its own topics (the default names suffixed with
the scenario's tag) and its own consumer group, so none sees another's data. Traffic stays on
127.0.0.1; every wait is bounded by --limit seconds, and a scenario that runs out of time prints what
it reached (marked `partial`) rather than waiting on.

Scenarios (`--only a,b`): pipe, naive, throughput, relay, hot_sku, deep_receipt, latency, two_workers,
scrape, promise. The README's "Performance" section says what each figure measures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import http.client
import importlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import localstack
import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from worker import compiled
from worker.adapters.avro import AvroCodec

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = (
    "pipe",
    "naive",
    "throughput",
    "relay",
    "hot_sku",
    "deep_receipt",
    "latency",
    "two_workers",
    "scrape",
    "promise",
)
# The worker's topic settings and their default names; each scenario suffixes the names with its tag.
TOPICS = {
    "order_created": "order-created",
    "inventory_received": "inventory-received",
    "order_cancelled": "order-cancelled",
    "product_policy": "product-policy",
    "restock_expected": "restock-expected",
    "shipment_dispatched": "shipment-dispatched",
    "fulfillment_requested": "fulfillment-requested",
    "customer_notification": "customer-notification",
    "backorder_status": "backorder-status",
    "dead_letter": "backorder-worker.dlq",
}
OUTBOUND = ("fulfillment_requested", "customer_notification", "backorder_status")
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOG_PATH = Path(os.environ.get("BENCH_WORKER_LOG", "/tmp/backorder-bench-workers.log"))
CODEC = AvroCodec.from_directory()


# ------------------------------------------------------------------------------------------ output


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def figure(name: str, value: object, note: str = "") -> None:
    text = f"{value:.1f}" if isinstance(value, float) else str(value)
    print(f"{name}: {text}  [load {loadavg()}]{'  ' + note if note else ''}", flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-quantile of sorted `values` (NaN for none)."""
    return values[max(int(q * len(values) + 0.5) - 1, 0)] if values else float("nan")


def say(text: str) -> None:
    print(f"# {text}", flush=True)


# ------------------------------------------------------------------------------------- /proc figures


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and of its children it reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / CLK_TCK


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU seconds used by the processes `roots`, every live descendant, and every descendant they reaped."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


def pid_listening_on(port: int) -> int | None:
    """The process with a TCP socket listening on 127.0.0.1:port (the Kafka broker's JVM)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{parts[9]}]")
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return int(pid)
    return None


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -------------------------------------------------------------------------------------------- stack


@dataclasses.dataclass
class Stack:
    endpoints: localstack.Endpoints
    postmaster_pid: int
    kafka_pid: int | None
    log_level: str  # the workers' BACKORDER_LOG_LEVEL (--log-level)

    def url(self, database: str) -> str:
        parts = urllib.parse.urlsplit(self.endpoints.database_url)
        return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


def wait_until(check: Callable[[], bool], limit_s: float, every_s: float = 0.05) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every_s)
    return check()


def one(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


class Scenario:
    """A fresh database, fresh topics and a fresh consumer group on the shared stack; workers started for it."""

    def __init__(self, stack: Stack, name: str, **settings: str) -> None:
        self.stack = stack
        self.name = name
        self.tag = f"{name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
        self.database = database = f"bench_{name}_{self.tag[-6:]}"
        with psycopg.connect(stack.endpoints.database_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
            # What earlier scenarios left dirty is written out now, not during this one's figures.
            admin.execute("CHECKPOINT")
        self.url = stack.url(database)
        self.topics = {key: f"{default}.{self.tag}" for key, default in TOPICS.items()}
        self.env = {
            **os.environ,
            **stack.endpoints.environ(),
            "DATABASE_URL": self.url,
            "BACKORDER_GROUP_ID": f"bench-{self.tag}",
            "BACKORDER_LOG_LEVEL": stack.log_level,
            **{f"BACKORDER_TOPIC_{key.upper()}": topic for key, topic in self.topics.items()},
            **settings,
        }
        localstack.prepare_worker(self.env, quiet=True)
        self.workers: list[tuple[subprocess.Popen[bytes], int]] = []
        self.conn = psycopg.connect(self.url, autocommit=True)

    def start_worker(self, **settings: str) -> subprocess.Popen[bytes]:
        return self.start("run", "BACKORDER_METRICS_PORT", **settings)[0]

    def start(self, command: str, port_setting: str, **settings: str) -> tuple[subprocess.Popen[bytes], int]:
        """`backorder-worker COMMAND` on a free port given as `port_setting`; stopped with the scenario."""
        port = localstack.free_port()
        env = {**self.env, port_setting: str(port), **settings}
        with LOG_PATH.open("ab") as log:  # the workers' own logs stay out of the figures
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", command],
                env=env,
                cwd=ROOT,
                start_new_session=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.workers.append((proc, port))
        return proc, port

    def worker_pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.workers]

    def stop_workers(self) -> None:
        for proc, _ in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.workers:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.workers = []

    def close(self) -> None:
        """Stop the workers and drop the scenario's database, so that no vacuum of it runs into the next one."""
        self.stop_workers()
        self.conn.close()
        with psycopg.connect(self.stack.endpoints.database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{self.database}" WITH (FORCE)')

    def cpu(self) -> dict[str, float]:
        return {
            "worker": tree_cpu_seconds(self.worker_pids()),
            "postgres": tree_cpu_seconds([self.stack.postmaster_pid]),
            "kafka": tree_cpu_seconds([self.stack.kafka_pid] if self.stack.kafka_pid else []),
        }

    def count(self, sql: str) -> int:
        return int(one(self.conn, sql))

    def outbox_drained(self) -> bool:
        # Every row, parked ones too (the bench's events are never refused), and a schema from before
        # parking existed: the same bench measures an earlier commit.
        return self.count("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0


@contextlib.contextmanager
def scenario(stack: Stack, name: str, **settings: str) -> Iterator[Scenario]:
    say(f"{name}: starting  [load {loadavg()}]")
    started = time.monotonic()
    sc = Scenario(stack, name, **settings)
    try:
        yield sc
    finally:
        sc.close()
        say(f"{name}: done in {time.monotonic() - started:.0f}s")


def producer(stack: Stack) -> Producer:
    return Producer(
        {
            "bootstrap.servers": stack.endpoints.kafka_bootstrap_servers,
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )


def produce(
    prod: Producer, topic: str, key: bytes, value: bytes, timestamp_ms: int = 0, on_delivery: Any = None
) -> None:
    while True:
        try:
            prod.produce(topic, key=key, value=value, timestamp=timestamp_ms, on_delivery=on_delivery)
            prod.poll(0)
            return
        except BufferError:
            prod.poll(0.05)


def send_orders(sc: Scenario, prod: Producer, values: list[tuple[bytes, bytes]], limit_s: float) -> tuple[int, float]:
    """Put the orders on the topic and wait until they are committed (at most `limit_s`); returns how many are
    and the seconds from the first recorded (its transaction began just after it was consumed) until then.

    Committed is seen by the last order put on each partition: a partition's orders are committed in their
    order, so when those are in, all are. (Counting `customer_order` every 20 ms instead cost PostgreSQL
    about 10 us of CPU an order, counted in its figure, and took that CPU from the worker.)
    """
    last: dict[int, tuple[int, str]] = {}

    def delivered(err: Any, msg: Any) -> None:
        if err is None and msg.offset() > last.get(msg.partition(), (-1, ""))[0]:
            last[msg.partition()] = (msg.offset(), msg.key().decode())

    for key, value in values:
        produce(prod, sc.topics["order_created"], key, value, on_delivery=delivered)
    prod.flush(60)
    ids = [order_id for _, order_id in last.values()]
    found = "SELECT count(*) FROM customer_order WHERE order_id = ANY(%s)"
    wait_until(lambda: int(one(sc.conn, found, (ids,))) == len(ids), limit_s, 0.02)
    ended = time.time()
    handled = sc.count("SELECT count(*) FROM customer_order")
    first = one(sc.conn, "SELECT extract(epoch FROM min(recorded_at)) FROM customer_order")
    return handled, ended - float(first) if first is not None else float("nan")


def watermark_total(stack: Stack, topics: list[str]) -> Callable[[], int]:
    """A function that returns how many messages the topics hold (sum of high watermarks)."""
    consumer = Consumer({"bootstrap.servers": stack.endpoints.kafka_bootstrap_servers, "group.id": "bench-watch"})
    metadata = consumer.list_topics(timeout=10)
    partitions = [TopicPartition(t, p) for t in topics for p in metadata.topics[t].partitions]

    def total() -> int:
        return sum(consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1] for tp in partitions)

    return total


# --------------------------------------------------------------------------------------------- data


def sku_name(tag: str, i: int) -> str:
    return f"{tag}-SKU-{i:03d}"


def make_orders(
    tag: str, count: int, skus: int, rng: random.Random, one_sku: str | None = None
) -> list[dict[str, Any]]:
    """Orders of 1-3 lines (one line when `one_sku`), tiers, shipping, need-by dates and split preferences mixed."""
    now = dt.datetime.now(dt.UTC)
    today = now.date()
    orders = []
    for i in range(count):
        picked = [one_sku] if one_sku else [sku_name(tag, s) for s in rng.sample(range(skus), 1 + rng.randrange(3))]
        orders.append(
            {
                "event_id": str(uuid.uuid4()),
                "occurred_at": now,
                "order_id": f"{tag}-O-{i}",
                "customer_id": f"c{rng.randrange(5000)}",
                "customer_tier": rng.choice(("STANDARD",) * 7 + ("VIP", "VIP", "WHOLESALE")),
                "shipping_service": "EXPEDITED" if rng.random() < 0.2 else "STANDARD",
                "need_by": today + dt.timedelta(days=rng.randrange(1, 10)) if rng.random() < 0.1 else None,
                "split_preference": rng.choice((None, None, "SHIP_AVAILABLE_NOW", "SHIP_COMPLETE")),
                "currency": "USD",
                "lines": [
                    {
                        "line_id": str(n + 1),
                        "sku": sku,
                        "product_name": "Bench item",
                        "quantity": 1 + rng.randrange(3),
                        "unit_price_minor": 500 + rng.randrange(5000),
                    }
                    for n, sku in enumerate(picked)
                ],
            }
        )
    return orders


def receipt(tag: str, n: int, sku: str, quantity: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": dt.datetime.now(dt.UTC),
        "receipt_id": f"{tag}-R-{n}",
        "sku": sku,
        "quantity": quantity,
        "supplier_id": None,
        "purchase_order_id": None,
    }


def stock_for_half(tag: str, orders: list[dict[str, Any]], skus: int) -> list[dict[str, Any]]:
    """Receipts for every other SKU: three quarters of what the orders want of it (in stock, then backordered)."""
    demand = [0] * skus
    for order in orders:
        for line in order["lines"]:
            demand[int(line["sku"].rsplit("-", 1)[1])] += line["quantity"]
    return [receipt(tag, s, sku_name(tag, s), max(1, demand[s] * 3 // 4)) for s in range(0, skus, 2)]


def send_receipts(sc: Scenario, prod: Producer, receipts: list[dict[str, Any]]) -> None:
    for r in receipts:
        produce(
            prod, sc.topics["inventory_received"], r["sku"].encode(), CODEC.encode("backorder.InventoryReceived", r)
        )
    prod.flush(60)


def encoded_orders(orders: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    return [(o["order_id"].encode(), CODEC.encode("backorder.OrderCreated", o)) for o in orders]


# ---------------------------------------------------------------------------------------- scenarios


@dataclasses.dataclass
class Burst:
    orders: int
    handled: int
    seconds: float
    cpu_s: dict[str, float]
    complete: bool
    missing: str = ""  # what the worker(s) should have written or published and did not

    @property
    def rate(self) -> float:
        return self.handled / self.seconds if self.seconds > 0 else float("nan")

    def cpu_us(self, part: str) -> float:
        return self.cpu_s[part] / max(self.handled, 1) * 1e6


def burst(
    sc: Scenario, orders: list[dict[str, Any]], skus: int, workers: int, limit_s: float, **settings: str
) -> Burst:
    """Receipts for half the SKUs handled first; then every order put on the topic at once while the
    worker(s) idle. Orders/s from the first order recorded (its transaction began, just after it was
    consumed) to the moment the last one is visible committed; CPU from before the orders were sent
    until their outbound events are published."""
    prod = producer(sc.stack)
    for _ in range(workers):
        sc.start_worker(**settings)
    receipts = stock_for_half(sc.tag, orders, skus)
    send_receipts(sc, prod, receipts)
    if not wait_until(lambda: sc.count("SELECT count(*) FROM stock_receipt") == len(receipts), limit_s):
        say(f"{sc.name}: the receipts were not handled within {limit_s:.0f}s")
    wait_until(sc.outbox_drained, limit_s)
    if workers > 1:
        time.sleep(3)  # let the group settle on its assignment before the burst
    values = encoded_orders(orders)
    before = sc.cpu()
    handled, seconds = send_orders(sc, prod, values, limit_s)
    drained = wait_until(sc.outbox_drained, limit_s / 2)
    after = sc.cpu()
    cpu = {k: after[k] - before[k] for k in before}
    missing = burst_missing(sc, orders, drained, limit_s / 2)
    return Burst(len(orders), handled, seconds, cpu, handled == len(orders), missing)


def burst_missing(sc: Scenario, orders: list[dict[str, Any]], drained: bool, waited_s: float) -> str:
    """What a burst's orders should have left once the outbox is drained (within `waited_s`), and did not: each of
    their lines written, no dead letter, on Kafka a status for each line and a fulfillment request or a notice for
    each order (more for the lines that later receipts or orders fill); said, and returned (empty if nothing is
    missing): a worker that loses what it should write is not measured as a fast one."""
    missing = _missing(sc, orders) if drained else f"the outbox not drained within {waited_s:.0f}s"
    if missing:
        say(f"{sc.name}: {missing}")
    return missing


def _missing(sc: Scenario, orders: list[dict[str, Any]]) -> str:
    lines = sum(len(order["lines"]) for order in orders)
    written = sc.count("SELECT count(*) FROM order_line")
    dead = sc.count("SELECT count(*) FROM dead_letter")
    statuses = watermark_total(sc.stack, [sc.topics["backorder_status"]])()
    answers = watermark_total(sc.stack, [sc.topics["fulfillment_requested"], sc.topics["customer_notification"]])()
    problems = [
        *([f"{written} of {lines} order lines written"] if written != lines else []),
        *([f"{dead} messages dead-lettered"] if dead else []),
        *([f"{statuses} line statuses on Kafka for {lines} lines"] if statuses < lines else []),
        *([f"{answers} fulfillment requests and notices for {len(orders)} orders"] if answers < len(orders) else []),
    ]
    return "; ".join(problems)


def partial_note(b: Burst) -> str:
    notes = [] if b.complete else [f"{b.handled} of {b.orders} orders within the limit"]
    notes += [b.missing] if b.missing else []
    return f"(partial: {'; '.join(notes)})" if notes else ""


def run_pipe(stack: Stack, args: argparse.Namespace) -> None:
    """A bare consume -> fastavro decode -> encode -> produce loop in this process, no database."""
    tag = f"pipe-{uuid.uuid4().hex[:6]}"
    source, sink = f"bench-pipe-in.{tag}", f"bench-pipe-out.{tag}"
    admin = AdminClient({"bootstrap.servers": stack.endpoints.kafka_bootstrap_servers})
    for future in admin.create_topics(
        [NewTopic(t, num_partitions=6, replication_factor=1) for t in (source, sink)]
    ).values():
        future.result()
    say(f"pipe: starting  [load {loadavg()}]")
    prod = producer(stack)
    for key, value in encoded_orders(make_orders(tag, args.orders, args.skus, random.Random(1))):
        produce(prod, source, key, value)
    prod.flush(60)
    consumer = Consumer(
        {
            "bootstrap.servers": stack.endpoints.kafka_bootstrap_servers,
            "group.id": f"bench-{tag}",
            "auto.offset.reset": "earliest",
            "enable.auto.offset.store": False,
        }
    )
    consumer.subscribe([source])
    out = producer(stack)
    seen, first = 0, None
    deadline = time.monotonic() + args.limit
    while seen < args.orders and time.monotonic() < deadline:
        for msg in consumer.consume(500, 0.5):
            if msg.error():
                continue
            first = first or time.monotonic()
            name, record = CODEC.decode(msg.value())
            produce(out, sink, msg.key(), CODEC.encode(name, record))
            consumer.store_offsets(msg)
            seen += 1
    out.flush(60)
    elapsed = time.monotonic() - (first or time.monotonic())
    consumer.close()
    figure("pipe_floor_msgs_per_s", seen / elapsed if elapsed else float("nan"))


def run_naive(stack: Stack, args: argparse.Namespace) -> Burst:
    with scenario(stack, "naive") as sc:
        b = burst(
            sc,
            make_orders(sc.tag, args.naive_orders, args.skus, random.Random(2)),
            args.skus,
            1,
            args.limit,
            BACKORDER_BATCH_SIZE="1",
        )
    figure("naive_orders_per_s", b.rate, partial_note(b))
    figure("naive_cpu_us_per_order", b.cpu_us("worker") + b.cpu_us("postgres") + b.cpu_us("kafka"))
    return b


def run_throughput(
    stack: Stack, args: argparse.Namespace, name: str = "throughput", workers: int = 1, **settings: str
) -> Burst:
    with scenario(stack, name) as sc:
        orders = make_orders(sc.tag, args.orders, args.skus, random.Random(3))
        b = burst(sc, orders, args.skus, workers, args.limit, **settings)
    if workers == 1:
        figure("throughput_orders_per_s", b.rate, partial_note(b))
        for part in ("worker", "postgres", "kafka"):
            figure(f"cpu_us_per_order_{part}", b.cpu_us(part))
        figure("cpu_us_per_order_total", sum(b.cpu_us(p) for p in ("worker", "postgres", "kafka")))
    else:
        figure(f"{name}_orders_per_s", b.rate, partial_note(b))
        figure(f"{name}_cpu_us_per_order_total", sum(b.cpu_us(p) for p in ("worker", "postgres", "kafka")))
    return b


def run_relay(stack: Stack, args: argparse.Namespace) -> None:
    """Outbound rows written straight into a fresh outbox (BackorderStatusChanged events, as the worker
    encodes them), then one worker started: events per second from the first to the last on Kafka."""
    with scenario(stack, "relay") as sc:
        now = dt.datetime.now(dt.UTC)
        with sc.conn.cursor().copy("COPY outbox (event_id, topic, message_key, message_value) FROM STDIN") as copy:
            for i in range(args.relay_events):
                record = {
                    "event_id": str(uuid.uuid4()),
                    "occurred_at": now,
                    "order_id": f"{sc.tag}-O-{i}",
                    "line_id": "1",
                    "sku": sku_name(sc.tag, i % args.skus),
                    "status": "BACKORDERED",
                    "quantity_ordered": 2,
                    "quantity_allocated": 0,
                    "quantity_backordered": 2,
                    "expected_ship_date": None,
                    "reason": "no stock",
                }
                value = CODEC.encode("backorder.BackorderStatusChanged", record)
                copy.write_row((record["event_id"], sc.topics["backorder_status"], record["order_id"].encode(), value))
        on_kafka = watermark_total(stack, [sc.topics["backorder_status"]])
        sc.start_worker()
        first: list[float] = []

        def all_out() -> bool:
            n = on_kafka()
            if n and not first:
                first.append(time.monotonic())
            return n >= args.relay_events

        complete = wait_until(all_out, args.limit, 0.1)
        published = on_kafka()
        seconds = time.monotonic() - first[0] if first else float("nan")
    note = "" if complete else f"(partial: {published} of {args.relay_events} within the limit)"
    figure("relay_events_per_s", published / seconds if seconds else float("nan"), note)


def run_hot_sku(stack: Stack, args: argparse.Namespace) -> None:
    with scenario(stack, "hot_sku") as sc:
        hot = sku_name(sc.tag, 0)
        orders = make_orders(sc.tag, args.hot_orders, 1, random.Random(4), one_sku=hot)
        # No stock for the SKU: every order waits.
        prod = producer(stack)
        sc.start_worker()
        values = encoded_orders(orders)
        time.sleep(3)  # the worker joins its group
        before = sc.cpu()
        handled, seconds = send_orders(sc, prod, values, args.limit)
        cpu = {k: v - before[k] for k, v in sc.cpu().items()}
        drained = wait_until(sc.outbox_drained, args.limit / 2)
        missing = burst_missing(sc, orders, drained, args.limit / 2)
        b = Burst(len(orders), handled, seconds, cpu, handled == len(orders), missing)
        figure("hot_sku_orders_per_s", b.rate, partial_note(b))
        demand = int(one(sc.conn, "SELECT coalesce(sum(quantity), 0) FROM order_line"))
        pieces = 10
        receipts = [
            receipt(sc.tag, n, hot, demand // pieces + (demand % pieces if n == 0 else 0)) for n in range(pieces)
        ]
        started = time.monotonic()
        send_receipts(sc, prod, receipts)
        waiting = "SELECT count(*) FROM order_line WHERE status IN ('BACKORDERED', 'PARTIALLY_ALLOCATED')"
        filled = wait_until(
            lambda: sc.count("SELECT count(*) FROM stock_receipt") == pieces and sc.count(waiting) == 0, args.limit, 0.1
        )
        seconds = time.monotonic() - started
        left = sc.count(waiting)
    figure(
        "hot_sku_fill_seconds",
        seconds if filled else f">{seconds:.0f}",
        "" if filled else f"(partial: {left} lines still waiting)",
    )


def write_waiting(
    sc: Scenario, n: int, sku_sql: str, params: dict[str, Any], *, since: str, step: str, vip_every: int | None
) -> None:
    """N waiting one-unit lines, one per order, written set-based: order g placed `since` ago plus g times
    `step`, of the SKU `sku_sql` gives (SQL over g and `params`); every `vip_every`-th a VIP's."""
    tier = f"CASE WHEN g %% {vip_every} = 0 THEN 'VIP' ELSE 'STANDARD' END" if vip_every else "'STANDARD'"
    placed = f"now() - interval '{since}' + g * interval '{step}'"
    values = {"tag": sc.tag, "n": n, **params}
    sc.conn.execute(
        f"""INSERT INTO customer_order (order_id, customer_id, customer_tier, shipping_service, currency,
                                        placed_at, event_id, order_units, outcome)
            SELECT %(tag)s || '-O-' || g, 'c' || g %% 5000, {tier}, 'STANDARD', 'USD', {placed},
                   gen_random_uuid()::text, 1, 'FULLY_BACKORDERED'
            FROM generate_series(1, %(n)s) g""",
        values,
    )
    sc.conn.execute(
        f"""INSERT INTO order_line (order_id, line_id, sku, product_name, quantity, unit_price_minor, status,
                                    placed_at, updated_at, backordered)
            SELECT %(tag)s || '-O-' || g, '1', {sku_sql}, 'Bench item', 1, 1000, 'BACKORDERED', {placed}, now(), true
            FROM generate_series(1, %(n)s) g""",
        values,
    )


_HAS_PLANS = (
    "SELECT count(*) FROM information_schema.columns WHERE table_name = 'stock_level' AND column_name = 'promised'"
)


def run_deep_receipt(stack: Stack, args: argparse.Namespace) -> None:
    """A queue of N waiting lines on one SKU written straight into the database (one line per order,
    each wanting one unit), then one receipt of N units through Kafka."""
    with scenario(stack, "deep_receipt") as sc:
        sku, n = sku_name(sc.tag, 0), args.deep_lines
        with sc.conn.transaction():
            sc.conn.execute("INSERT INTO stock_level (sku, available, received_total) VALUES (%s, 0, 0)", (sku,))
            write_waiting(sc, n, "%(sku)s", {"sku": sku}, since="1 day", step="1 ms", vip_every=None)
        sc.conn.execute("VACUUM ANALYZE")
        fulfillments = watermark_total(stack, [sc.topics["fulfillment_requested"]])
        prod = producer(stack)
        worker = sc.start_worker()
        warm = receipt(sc.tag, 0, sku_name(sc.tag, 1), 1)  # another SKU: the worker is consuming once it is in
        send_receipts(sc, prod, [warm])
        wait_until(lambda: sc.count("SELECT count(*) FROM stock_receipt") == 1, args.limit)
        deep = receipt(sc.tag, 1, sku, n)
        before = sc.cpu()
        started = time.monotonic()
        send_receipts(sc, prod, [deep])
        # The receipt commits with its plan (every unit promised to its line, none left on hand); then each step
        # writes its lines, allocations and events. (A worker from before plans, measured against, committed the
        # receipt with its first step, and its units left the shelf step by step.)
        planned = "promised" if sc.count(_HAS_PLANS) else "0"
        state = f"""SELECT (SELECT count(*) FROM stock_receipt WHERE receipt_id = '{deep["receipt_id"]}'),
                           EXISTS (SELECT 1 FROM allocation WHERE sku = '{sku}'),
                           (SELECT available FROM stock_level WHERE sku = '{sku}'),
                           (SELECT {planned} FROM stock_level WHERE sku = '{sku}')"""
        seen: dict[str, float] = {}

        def look() -> bool:
            row = sc.conn.execute(state).fetchone()
            assert row is not None
            receipt_in, given, available, promised = row
            at = time.monotonic() - started
            if given:
                seen.setdefault("first", at)
            if receipt_in and available == 0:
                seen.setdefault("commit", at)
                if promised == 0:
                    seen.setdefault("written", at)
            return {"first", "commit", "written"} <= seen.keys()

        wait_until(look, args.limit, 0.02)
        waited = time.monotonic() - started
        first_s, commit_s, written_s = (seen.get(mark, waited) for mark in ("first", "commit", "written"))
        begun, committed, written = ("first" in seen, "commit" in seen, "written" in seen)
        published = wait_until(lambda: fulfillments() >= n, args.limit, 0.1)
        last_s = time.monotonic() - started
        sent = fulfillments()
        rss = peak_rss_mb(worker.pid) if worker.poll() is None else float("nan")
        drained = wait_until(sc.outbox_drained, args.limit)  # its statuses and notifications too
        cpu = {part: spent - before[part] for part, spent in sc.cpu().items()}
    figure("deep_receipt_first_step_seconds", first_s if begun else f">{first_s:.0f}")
    figure("deep_receipt_commit_seconds", commit_s if committed else f">{commit_s:.0f}")
    figure("deep_receipt_lines_written_seconds", written_s if written else f">{written_s:.0f}")
    figure(
        "deep_receipt_last_event_seconds",
        last_s if published else f">{last_s:.0f}",
        "" if published else f"(partial: {sent} of {n} fulfillment requests on Kafka)",
    )
    figure("deep_receipt_worker_peak_rss_mb", rss)
    partial = "" if drained else "(partial: the outbox not drained within the limit)"
    figure("deep_receipt_cpu_us_per_line_worker", cpu["worker"] / n * 1e6, partial)
    figure("deep_receipt_cpu_us_per_line_total", sum(cpu.values()) / n * 1e6, partial)


def run_latency(stack: Stack, args: argparse.Namespace) -> None:
    """Orders paced at --latency-rate per second: for --latency-warmup seconds (reported apart), then for
    --latency-seconds, one stream; per order, from the inbound message's timestamp to that of the first
    outbound event naming it (any of the three topics).

    The warm-up is for the broker as much as for the worker: its JIT compiler threads took 0.3-0.6 of the
    machine's 2 cores for the first 15-20 s of a stream of small produce and fetch requests, even after the
    throughput scenario had run on it, and left the worker half a core."""
    with scenario(stack, "latency") as sc:
        warmup = int(args.latency_rate * args.latency_warmup)
        total = warmup + int(args.latency_rate * args.latency_seconds)
        orders = make_orders(sc.tag, total, args.skus, random.Random(5))
        prod = producer(stack)
        sc.start_worker()
        receipts = stock_for_half(sc.tag, orders, args.skus)
        send_receipts(sc, prod, receipts)
        wait_until(lambda: sc.count("SELECT count(*) FROM stock_receipt") == len(receipts), args.limit)
        wait_until(sc.outbox_drained, args.limit)
        answered: dict[str, int] = {}
        stop = threading.Event()
        consumer = Consumer(
            {"bootstrap.servers": stack.endpoints.kafka_bootstrap_servers, "group.id": f"bench-watch-{sc.tag}"}
        )
        metadata = consumer.list_topics(timeout=10)
        outbound = [sc.topics[t] for t in OUTBOUND]
        consumer.assign(
            [TopicPartition(t, p, -1) for t in outbound for p in metadata.topics[t].partitions]  # from the end
        )

        def watch() -> None:
            while not stop.is_set():
                for msg in consumer.consume(1000, 0.2):
                    if msg.error():
                        continue
                    # The key is the order id on all three topics (contract): the watcher decodes nothing, and
                    # takes less of the machine the worker runs on (3,000 Avro decodes a second before).
                    order_id = (msg.key() or b"").decode()
                    stamp = msg.timestamp()[1]
                    if order_id not in answered or stamp < answered[order_id]:
                        answered[order_id] = stamp

        watcher = threading.Thread(target=watch, name="bench-latency-watch", daemon=True)
        watcher.start()
        time.sleep(1)  # the assignment is in place before the first order
        values = encoded_orders(orders)
        sent: dict[str, int] = {}
        tick = 0.01
        per_tick = args.latency_rate * tick
        started = time.monotonic()
        for i, (key, value) in enumerate(values):
            due = started + int(i / per_tick) * tick
            if (pause := due - time.monotonic()) > 0:
                time.sleep(pause)
            stamp = int(time.time() * 1000)
            sent[key.decode()] = stamp
            produce(prod, sc.topics["order_created"], key, value, stamp)
        prod.flush(60)
        offered = len(values) / (time.monotonic() - started)
        sending_ended = time.time()
        wait_until(lambda: len(answered) >= total, args.latency_wait, 0.2)
        stop.set()
        watcher.join(10)
        consumer.close()
        waited_ms = (time.time() - sending_ended) * 1000
    warming = [order["order_id"] for order in orders[:warmup]]
    measured = [order["order_id"] for order in orders[warmup:]]

    def pct(ids: list[str], q: float) -> tuple[object, str]:
        latencies = sorted(answered[o] - sent[o] for o in ids if o in answered)
        rank = max(int(q * len(ids) + 0.5) - 1, 0)  # unanswered orders count as slower than every answered one
        missing = len(ids) - len(latencies)
        note = f"({missing} of {len(ids)} orders unanswered {waited_ms / 1000:.0f}s after the last)" if missing else ""
        return (float(latencies[rank]) if rank < len(latencies) else f">{waited_ms:.0f}"), note

    figure("latency_offered_orders_per_s", offered)
    if warming:
        value, note = pct(warming, 0.99)
        figure(
            "latency_warmup_p99_ms",
            value,
            f"(the first {args.latency_warmup:.0f}s of the stream, not in the figures below) {note}".strip(),
        )
    for name, q in (("latency_p50_ms", 0.50), ("latency_p99_ms", 0.99)):
        figure(name, *pct(measured, q))


def state_function() -> Callable[[psycopg.Connection[Any]], Any] | None:
    """The function the state refresh behind /metrics calls, wherever it lives now."""
    for module in ("worker.adapters.postgres", "worker.adapters.read", "worker.adapters.postgres.read"):
        with contextlib.suppress(ImportError):
            found = getattr(importlib.import_module(module), "state_figures", None)
            if found is not None:
                return found  # type: ignore[no-any-return]
    return None


def run_scrape(stack: Stack, args: argparse.Namespace) -> None:
    """N closed lines (9 in 10 shipped, 1 in 10 cancelled; 4 lines per order) written set-based,
    then /metrics scraped and the state query (what the background refresh runs) timed."""
    with scenario(stack, "scrape") as sc:
        orders = (args.scrape_lines + 3) // 4
        loaded = time.monotonic()
        with sc.conn.transaction():
            sc.conn.execute(
                """INSERT INTO customer_order (order_id, customer_id, customer_tier, shipping_service, currency,
                                               placed_at, event_id, order_units, outcome)
                   SELECT 'closed-' || g, 'c' || g %% 5000, 'STANDARD', 'STANDARD', 'USD',
                          now() - interval '90 days' + g * interval '1 s', gen_random_uuid()::text, 4, 'IN_STOCK'
                   FROM generate_series(1, %s) g""",
                (orders,),
            )
            sc.conn.execute(
                """INSERT INTO order_line (order_id, line_id, sku, product_name, quantity, unit_price_minor, status,
                                           placed_at, updated_at, quantity_allocated, quantity_shipped, shipped_at,
                                           filled_at, quantity_cancelled, cancel_reason)
                   SELECT 'closed-' || g, l::text, 'SKU-' || (g * 4 + l) %% 200, 'Bench item', 1, 1000,
                          CASE WHEN g %% 10 = 0 THEN 'CANCELLED' ELSE 'SHIPPED' END, o.placed_at, o.placed_at,
                          CASE WHEN g %% 10 = 0 THEN 0 ELSE 1 END, CASE WHEN g %% 10 = 0 THEN 0 ELSE 1 END,
                          CASE WHEN g %% 10 = 0 THEN NULL ELSE o.placed_at END,
                          CASE WHEN g %% 10 = 0 THEN NULL ELSE o.placed_at END,
                          CASE WHEN g %% 10 = 0 THEN 1 ELSE 0 END,
                          CASE WHEN g %% 10 = 0 THEN 'CUSTOMER' END
                   FROM generate_series(1, %s) g CROSS JOIN generate_series(1, 4) l
                   JOIN customer_order o ON o.order_id = 'closed-' || g""",
                (orders,),
            )
        sc.conn.execute("VACUUM ANALYZE")
        lines = sc.count("SELECT count(*) FROM order_line")
        say(f"scrape: {lines} closed lines written in {time.monotonic() - loaded:.0f}s")
        sc.start_worker()
        _, port = sc.workers[0]
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape() -> float:
            began = time.perf_counter()
            with urllib.request.urlopen(url, timeout=30) as response:
                response.read()
            return (time.perf_counter() - began) * 1000

        def answers() -> bool:
            try:
                scrape()
                return True
            except OSError:
                return False

        if not wait_until(answers, args.limit, 0.5):
            figure("scrape_ms", "n/a", "(/metrics never answered)")
            return
        scrapes = [scrape() for _ in range(20)]
        figure("scrape_ms", statistics.median(scrapes), f"(median of 20; max {max(scrapes):.1f})")
        read = state_function()
        if read is None:
            figure("state_refresh_ms", "n/a", "(state_figures not found)")
            return
        with psycopg.connect(sc.url, autocommit=True) as conn:
            runs = []
            for _ in range(5):
                began = time.perf_counter()
                read(conn)
                runs.append((time.perf_counter() - began) * 1000)
        figure("state_refresh_ms", statistics.median(runs), f"(median of 5; max {max(runs):.1f})")


def run_promise(stack: Stack, args: argparse.Namespace) -> None:
    """N waiting lines (one unit each, one line per order, 1 in 10 a VIP's) over --skus SKUs and 50 SKUs in
    stock, written set-based; then a worker handles one expected restock per SKU that covers its queue, so that
    every line's expected ship date is the one the rules give (as in a database the worker keeps), and stops.
    Then `backorder-worker serve` answers one cart per SKU, one after the other (the cold pass: every queue
    read from the database for the first time), then carts of 1 to 3 lines over all the SKUs, paced at
    --promise-rate per second: for --promise-warmup seconds (reported apart), then for --promise-seconds (the
    p50 and p99). A request's time runs from when it was due to its whole answer, so a server that falls
    behind counts its backlog."""
    with scenario(stack, "promise") as sc:
        n, skus, stocked = args.promise_lines, args.skus, 50
        loaded = time.monotonic()
        with sc.conn.transaction():
            sc.conn.execute(
                """INSERT INTO stock_level (sku, available, received_total)
                   SELECT %(tag)s || '-S-' || s, 0, 0 FROM generate_series(0, %(skus)s - 1) s
                   UNION ALL
                   SELECT %(tag)s || '-IN-' || s, 1000000, 1000000 FROM generate_series(0, %(stocked)s - 1) s""",
                {"tag": sc.tag, "skus": skus, "stocked": stocked},
            )
            write_waiting(
                sc, n, "%(tag)s || '-S-' || g %% %(skus)s", {"skus": skus}, since="5 days", step="1 s", vip_every=10
            )
            # The version of each SKU written here, as the worker's saves would have set it (from migration
            # 0008 on; a commit before it is benchmarked without).
            if sc.count("SELECT count(*) FROM pg_class WHERE relname = 'sku_queue_version'"):
                sc.conn.execute(
                    """INSERT INTO sku_queue_version (sku, version)
                       SELECT sku, (random() * 9.2e18)::bigint FROM stock_level WHERE sku LIKE %(tag)s || '-%%'""",
                    {"tag": sc.tag},
                )
        sc.conn.execute("VACUUM ANALYZE")
        waiting = sc.count("SELECT count(*) FROM order_line WHERE status = 'BACKORDERED'")
        say(f"promise: {waiting} waiting lines over {skus} SKUs written in {time.monotonic() - loaded:.0f}s")
        prod = producer(stack)
        sc.start_worker()
        for s in range(skus):
            restock = {
                "event_id": str(uuid.uuid4()),
                "occurred_at": dt.datetime.now(dt.UTC),
                "sku": f"{sc.tag}-S-{s}",
                "purchase_order_id": f"PO-{s}",
                "supplier_id": f"supplier-{s % 10}",
                "quantity": n // skus + 100,
                "expected_date": dt.date.today() + dt.timedelta(days=7 + s % 21),
            }
            key = restock["sku"].encode()
            produce(prod, sc.topics["restock_expected"], key, CODEC.encode("backorder.RestockExpected", restock))
        prod.flush(60)
        dated = wait_until(
            lambda: sc.count("SELECT count(*) FROM order_line WHERE expected_ship_date IS NULL") == 0, args.limit, 0.5
        )
        sc.stop_workers()  # the worker's CPU stays out of the promises' figures
        sc.conn.execute("VACUUM ANALYZE")
        say(f"promise: expected ship dates {'set' if dated else 'NOT all set'} by the worker")

        server, port = sc.start("serve", "BACKORDER_PROMISE_PORT")
        rng = random.Random(11)
        names = [f"{sc.tag}-S-{s}" for s in range(skus)] + [f"{sc.tag}-IN-{s}" for s in range(stocked)]

        def cart(i: int) -> bytes:
            lines = [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in rng.sample(names, rng.randint(1, 3))]
            tier = rng.choice(["STANDARD", "STANDARD", "STANDARD", "VIP", "WHOLESALE"])
            return json.dumps({"customer_id": f"shopper-{i}", "customer_tier": tier, "lines": lines}).encode()

        def ask(conn: http.client.HTTPConnection, body: bytes) -> int:
            conn.request("POST", "/v1/promise", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            return response.status

        def answers() -> bool:
            try:
                with contextlib.closing(http.client.HTTPConnection("127.0.0.1", port, timeout=5)) as conn:
                    return ask(conn, cart(-1)) == 200
            except OSError:
                return False

        if not wait_until(answers, args.limit, 0.2):
            figure("promise_p50_ms", "n/a", "(the promise API never answered)")
            return
        cold: list[float] = []
        with contextlib.closing(http.client.HTTPConnection("127.0.0.1", port, timeout=30)) as conn:
            for name in names:
                body = json.dumps({"customer_id": "cold", "lines": [{"sku": name, "quantity": 1}]}).encode()
                asked = time.monotonic()
                ask(conn, body)
                cold.append((time.monotonic() - asked) * 1000)
        cold.sort()
        figure("promise_cold_p50_ms", percentile(cold, 0.5), f"(one cart per SKU, {len(cold)} one after the other)")
        warmup = int(args.promise_rate * args.promise_warmup)
        total = warmup + int(args.promise_rate * args.promise_seconds)
        bodies = [cart(i) for i in range(total)]
        times: list[float] = []
        warming: list[float] = []
        statuses: dict[int, int] = {}
        lock = threading.Lock()
        next_index = iter(range(total))
        started = time.monotonic() + 0.5
        measured_from = started + warmup / args.promise_rate

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for i in next_index:  # the iterator is shared: each index is taken by one client
                due = started + i / args.promise_rate
                if (pause := due - time.monotonic()) > 0:
                    time.sleep(pause)
                try:
                    status = ask(conn, bodies[i])
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    status = 0
                took = (time.monotonic() - due) * 1000
                with lock:
                    (warming if i < warmup else times).append(took)
                    statuses[status] = statuses.get(status, 0) + 1
            conn.close()

        clients = [threading.Thread(target=client, name=f"bench-promise-{c}") for c in range(10)]
        cpu_before = tree_cpu_seconds([server.pid])
        for c in clients:
            c.start()
        for c in clients:
            c.join(args.promise_warmup + args.promise_seconds + args.limit)
        elapsed = time.monotonic() - measured_from
        server_cpu_s = tree_cpu_seconds([server.pid]) - cpu_before
    times.sort()
    warming.sort()

    failed = sum(count for status, count in statuses.items() if status != 200)
    note = f"({len(times)} requests in {elapsed:.0f}s, {failed} not 200: {statuses})" if failed else ""
    if warming:
        figure(
            "promise_warmup_p99_ms",
            percentile(warming, 0.99),
            f"(the first {args.promise_warmup:.0f}s at the offered rate, not in the figures below)",
        )
    figure("promise_offered_per_s", args.promise_rate)
    figure("promise_answered_per_s", len(times) / elapsed if elapsed else float("nan"))
    figure("promise_p50_ms", percentile(times, 0.50), note)
    figure("promise_p99_ms", percentile(times, 0.99), note)
    figure(
        "promise_server_cpu_us_per_request",
        server_cpu_s / total * 1e6,
        f"(the server process's CPU over the {total} paced requests, warm-up included)",
    )


# --------------------------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes everywhere: a check that it all runs")
    parser.add_argument("--orders", type=int, help="orders of the throughput and two-worker bursts (20,000)")
    parser.add_argument("--naive-orders", type=int, help="orders of the batch-size-1 burst (2,000)")
    parser.add_argument("--skus", type=int, default=200)
    parser.add_argument("--hot-orders", type=int, help="orders for the one hot SKU (20,000)")
    parser.add_argument("--deep-lines", type=int, help="waiting lines the deep receipt meets (100,000)")
    parser.add_argument("--latency-rate", type=float, help="orders per second offered (1,000)")
    parser.add_argument("--latency-seconds", type=float, help="for how long, measured (30)")
    parser.add_argument("--latency-warmup", type=float, help="at the same rate before, reported apart (20)")
    parser.add_argument("--latency-wait", type=float, help="how long to wait for answers after the last order (60)")
    parser.add_argument("--relay-events", type=int, help="outbox rows the relay publishes (50,000)")
    parser.add_argument("--scrape-lines", type=int, help="closed lines in the database for the scrape (1,000,000)")
    parser.add_argument("--promise-lines", type=int, help="waiting lines in the database for the promises (100,000)")
    parser.add_argument("--promise-rate", type=float, help="promise requests per second offered (200)")
    parser.add_argument("--promise-seconds", type=float, help="for how long, measured (60)")
    parser.add_argument("--promise-warmup", type=float, help="at the same rate before, not measured (10)")
    parser.add_argument("--limit", type=float, help="bound on each wait, seconds (240)")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="the workers' BACKORDER_LOG_LEVEL (INFO, the worker's default: a record for each order decided)",
    )
    args = parser.parse_args(argv)
    full = {
        "orders": 20_000,
        "naive_orders": 2_000,
        "hot_orders": 20_000,
        "deep_lines": 100_000,
        "latency_rate": 1000.0,
        "latency_seconds": 30.0,
        "latency_warmup": 20.0,
        "latency_wait": 60.0,
        "relay_events": 50_000,
        "scrape_lines": 1_000_000,
        "promise_lines": 100_000,
        "promise_rate": 200.0,
        "promise_seconds": 60.0,
        "promise_warmup": 10.0,
        "limit": 240.0,
    }
    quick = {
        "orders": 1_000,
        "naive_orders": 200,
        "hot_orders": 1_000,
        "deep_lines": 2_000,
        "latency_rate": 100.0,
        "latency_seconds": 5.0,
        "latency_warmup": 2.0,
        "latency_wait": 20.0,
        "relay_events": 2_000,
        "scrape_lines": 20_000,
        "promise_lines": 2_000,
        "promise_rate": 50.0,
        "promise_seconds": 5.0,
        "promise_warmup": 2.0,
        "limit": 60.0,
    }
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def rules_compiled() -> bool:
    """Whether the workers started here (`python -m worker` in ROOT) run the rules compiled."""
    return compiled.built(ROOT / "worker") == list(compiled.SOURCES)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    began = time.monotonic()
    with localstack.local_stack(durable_postgres=True) as endpoints:
        with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
            backend = int(one(conn, "SELECT pg_backend_pid()"))
            settings = {name: one(conn, f"SHOW {name}") for name in ("fsync", "synchronous_commit", "full_page_writes")}
            stat = _stat(backend)  # while the backend lives: its parent is the postmaster
        assert stat is not None
        port = int(endpoints.kafka_bootstrap_servers.rsplit(":", 1)[1])
        stack = Stack(endpoints, postmaster_pid=stat[0], kafka_pid=pid_listening_on(port), log_level=args.log_level)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        say(
            f"commit {commit.stdout.strip() or '?'}, {os.cpu_count()} CPUs, PostgreSQL "
            + ", ".join(f"{k}={v}" for k, v in settings.items())
            + f", Kafka broker pid {stack.kafka_pid}, postmaster pid {stack.postmaster_pid}"
            + f', rules {"compiled" if rules_compiled() else "interpreted"} (README, "Compiled rules")'
        )
        say(
            f"sizes: {', '.join(f'{k}={getattr(args, k)}' for k in ('orders', 'naive_orders', 'hot_orders'))}, "
            f"deep_lines={args.deep_lines}, latency {args.latency_rate:.0f}/s for {args.latency_seconds:.0f}s, "
            f"relay_events={args.relay_events}, scrape_lines={args.scrape_lines}, limit {args.limit:.0f}s per wait"
        )
        LOG_PATH.write_bytes(b"")  # this run's only: at INFO a full run writes tens of MB
        say(f"load average at start: {loadavg()}; worker logs (at {args.log_level}) in {LOG_PATH}")
        naive = throughput = None
        for name in args.only:
            try:
                if name == "pipe":
                    run_pipe(stack, args)
                elif name == "naive":
                    naive = run_naive(stack, args)
                elif name == "throughput":
                    throughput = run_throughput(stack, args)
                elif name == "relay":
                    run_relay(stack, args)
                elif name == "hot_sku":
                    run_hot_sku(stack, args)
                elif name == "deep_receipt":
                    run_deep_receipt(stack, args)
                elif name == "latency":
                    run_latency(stack, args)
                elif name == "two_workers":
                    run_throughput(stack, args, "two_workers", workers=2)  # the default, `auto`: KIP-848 here
                    run_throughput(stack, args, "two_workers_classic", workers=2, BACKORDER_GROUP_PROTOCOL="classic")
                elif name == "scrape":
                    run_scrape(stack, args)
                elif name == "promise":
                    run_promise(stack, args)
            except Exception as exc:  # one scenario's failure does not cost the others' figures
                say(f"{name}: failed: {exc!r}")
                if isinstance(exc, subprocess.CalledProcessError) and exc.stderr:
                    say(f"{name}: {exc.stderr.decode(errors='replace')[-2000:]}")
        if naive is not None and throughput is not None:
            figure("throughput_over_naive", throughput.rate / naive.rate)
    say(f"load average at end: {loadavg()}")
    now = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if now.stdout.strip() != commit.stdout.strip():
        say(
            f"HEAD moved from {commit.stdout.strip()} to {now.stdout.strip()} during the run:"
            " later scenarios ran newer code"
        )
    say(f"bench: {time.monotonic() - began:.0f}s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
