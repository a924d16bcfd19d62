"""The fault run: workers SIGKILLed and restarted, PostgreSQL crashed, the broker killed, the group grown
and shrunk, while orders, receipts and cancellations flow; then nothing lost, nothing oversold, nothing
published twice with different content.

About 100 s in `make test` (60 s of traffic); 10 minutes of traffic under `make soak` (BACKORDER_SOAK=1). It runs
its own Kafka broker and PostgreSQL (it kills them), on 127.0.0.1 like everything else. The workers run with their
own consumer defaults (session timeout; the group protocol `auto`, which takes KIP-848 on this broker), not the
shorter ones of the other tests, so the recovery times it reports are what an operator would see.
"""

from __future__ import annotations

import datetime as dt
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import localstack
import psycopg
import pytest

from tests import factories
from tests.conftest import Figures
from tests.integration.conftest import RECORD_OF, Deployment, WorkerProcess, wait_for
from tests.integration.scenario import Sampler, TrackingProducer, group_lag, loadavg, read_topic, soak
from worker.adapters.avro import AvroCodec

SOAK = soak()
TRAFFIC_S = 600.0 if SOAK else 60.0  # how long events are produced; faults are injected meanwhile
ORDERS = 20_000 if SOAK else 2_000
SKUS = 16
PARTITIONS = 6
RECOVERY_BOUND_S = 120.0  # a fault after which no stalled partition moves for this long fails the run
KILL_RECOVERY_MEDIAN_S = 15.0  # issue 8: a SIGKILLed worker's partitions progress again within 15 s (median)
SEED = 8


@pytest.fixture
def own_stack() -> Iterator[tuple[localstack.KafkaBroker, localstack.PostgresServer]]:
    """A broker and a PostgreSQL server this test may kill; in /tmp, where the server's user can reach it.

    PostgreSQL runs durable, as in production: with synchronous_commit off, an immediate stop loses
    transactions already reported committed, whose Kafka offsets the worker has then rightly committed."""
    with tempfile.TemporaryDirectory(prefix="backorder-fault-") as workdir:
        postgres = localstack.PostgresServer(Path(workdir) / "postgres", durable=True)
        broker = localstack.KafkaBroker(Path(workdir) / "kafka")
        try:
            postgres.start()
            broker.start()
            yield broker, postgres
        finally:
            broker.stop()
            postgres.stop()


@dataclass
class Plan:
    """The inbound events in the order they are produced, and the totals they add up to."""

    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (kind, tag, record)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancellations: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: Counter[str] = field(default_factory=Counter)
    oversupplied: set[str] = field(default_factory=set)


def make_plan(rng: random.Random, tag: str) -> Plan:
    plan = Plan()
    skus = [f"F{tag}-{i:02d}" for i in range(SKUS)]
    plan.oversupplied = set(skus[: SKUS // 2])
    demand: Counter[str] = Counter()
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    cancel_later: list[tuple[int, dict[str, Any]]] = []
    orders: list[tuple[str, str, dict[str, Any]]] = []
    for n in range(ORDERS):
        order_id = f"FO{tag}-{n:06d}"
        picked = rng.sample(skus, rng.randint(1, 3))
        lines = [(sku, rng.randint(1, 4)) for sku in picked]
        split = "SHIP_COMPLETE" if rng.random() < 0.2 else None
        record = factories.order(order_id, (start + dt.timedelta(minutes=n)).isoformat(), lines)
        record["split_preference"] = split
        plan.orders[order_id] = record
        orders.append(("order-created", order_id, record))
        for sku, quantity in lines:
            demand[sku] += quantity
        if rng.random() < 0.1:
            named = [] if rng.random() < 0.5 else [f"L{rng.randint(1, len(lines))}"]
            cancel = factories.cancellation(order_id, *named, cancelled_at=(start + dt.timedelta(days=30)).isoformat())
            cancel_later.append((n + rng.randint(5, 300), cancel))
    # Receipts cover 130% of an oversupplied SKU's demand and 60% of the others', in pieces over the run.
    receipts: list[tuple[int, dict[str, Any]]] = []
    for sku in skus:
        total = int(demand[sku] * (1.3 if sku in plan.oversupplied else 0.6))
        left, r = total, 0
        while left > 0:
            quantity = min(left, rng.randint(5, 40))
            left -= quantity
            receipt = factories.receipt(f"FR{tag}-{sku}-{r:04d}", sku, quantity)
            receipts.append((rng.randint(0, ORDERS), receipt))
            plan.received[sku] += quantity
            r += 1
    by_position: dict[int, list[tuple[str, str, dict[str, Any]]]] = defaultdict(list)
    for position, receipt in receipts:
        by_position[position].append(("inventory-received", receipt["receipt_id"], receipt))
    for position, cancel in cancel_later:
        by_position[min(position, ORDERS)].append(("order-cancelled", cancel["event_id"], cancel))
    for n in range(ORDERS + 1):
        if n < ORDERS:
            plan.events.append(orders[n])
        plan.events.extend(by_position.get(n, []))
    plan.receipts = {r["receipt_id"]: r for _, r in receipts}
    plan.cancellations = {c["event_id"]: c for _, c in cancel_later}
    return plan


class Progress:
    """When each order-created partition last moved: orders known to be in it that reached the database."""

    def __init__(self, database_url: str, producer: TrackingProducer, topic: str) -> None:
        self.database_url = database_url
        self.producer = producer
        self.topic = topic
        self.seen: set[str] = set()
        self.moved_at: dict[int, list[float]] = defaultdict(list)
        self.lock = threading.Lock()

    def pending(self) -> dict[int, list[str]]:
        """Orders delivered to Kafka and not yet in the database, by partition."""
        out: dict[int, list[str]] = defaultdict(list)
        for tag, landed in self.producer.snapshot().items():
            if landed.topic == self.topic and tag not in self.seen:
                out[landed.partition].append(tag)
        return out

    def sample(self) -> None:
        waiting = self.pending()
        ids = [tag for tags in waiting.values() for tag in tags]
        if not ids:
            return
        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=3) as conn:
            rows = conn.execute("SELECT order_id FROM customer_order WHERE order_id = ANY(%s)", (ids,)).fetchall()
        now = time.monotonic()
        arrived = {row[0] for row in rows}
        with self.lock:
            for partition, tags in waiting.items():
                if arrived.intersection(tags):
                    self.moved_at[partition].append(now)
            self.seen |= arrived

    def mark(self) -> tuple[float, set[int]]:
        """Samples now: the time, and the partitions whose orders delivered so far are not all in the database."""
        self.sample()
        return time.monotonic(), set(self.pending())

    def recovery_s(self, marked: float, stalled: set[int], origin: float) -> float | None:
        """Seconds from `origin` until every partition in `stalled` moved after `marked` (an order of it that was not
        in the database at `marked` reached it); None while one has not."""
        with self.lock:
            latest = 0.0
            for partition in stalled:
                after = [t for t in self.moved_at[partition] if t > marked]
                if not after:
                    return None
                latest = max(latest, after[0] - origin)
            return latest


@dataclass
class Fault:
    kind: str
    at_s: float
    watched_partitions: int  # none: nothing waited, nothing timed
    recovery_s: float | None = None


def test_fault_run(
    own_stack: tuple[localstack.KafkaBroker, localstack.PostgresServer],
    codec: AvroCodec,
    tmp_path: Path,
    figures: Figures,
) -> None:
    broker, postgres = own_stack
    rng = random.Random(SEED)
    tag = uuid.uuid4().hex[:6]
    plan = make_plan(rng, tag)
    world = Deployment(localstack.Endpoints(broker.bootstrap_servers, postgres.url), codec, tmp_path, PARTITIONS)
    # The worker's own consumer settings, not the fixture's 6 s session: recovery is measured as shipped. Receipts
    # that fill more than 6 lines (most: 5-40 units for lines of 1-4) are given in steps, through their plans, so
    # that the faults meet plans between their steps.
    worker_env = {"BACKORDER_KAFKA_CONSUMER_CONFIG": "{}", "BACKORDER_TRANSACTION_MAX_LINES": "6"}
    producer = TrackingProducer(broker.bootstrap_servers)
    progress = Progress(world.database_url, producer, world.topics["order-created"])
    workers: list[WorkerProcess] = []
    every_worker: list[WorkerProcess] = []
    exits: list[str] = []
    faults: list[Fault] = []
    sending_done = threading.Event()
    started = time.monotonic()

    def produce_all() -> None:
        pace = TRAFFIC_S / len(plan.events)
        for i, (kind, event_tag, record) in enumerate(plan.events):
            lag_s = started + i * pace - time.monotonic()
            if lag_s > 0:
                time.sleep(lag_s)
            key = record.get("order_id") or record.get("sku")
            producer.send(world.topics[kind], event_tag, str(key).encode(), codec.encode(RECORD_OF[kind], record))
        producer.flush(timeout_s=300)
        sending_done.set()

    def start_worker() -> WorkerProcess:
        worker = world.start_worker(**worker_env)
        every_worker.append(worker)
        return worker

    def live() -> list[WorkerProcess]:
        for w in list(workers):
            if w.proc.poll() is not None:
                exits.append(f"{w.log_path.name} exited with {w.proc.returncode}")
                workers.remove(w)
        return workers

    order_topic = world.topics["order-created"]

    def flowing(at: float) -> bool:
        """Whether every partition still gets new orders after `at` (about 7 a second each while they are sent)."""
        return at < started + TRAFFIC_S - 5.0

    def inject(kind: str) -> None:
        # A SIGKILL is timed from the kill and watches the victim's partitions of order-created; a restart or a
        # change of the group is timed from when it is done and watches every partition. While orders still come,
        # each watched partition gets new ones; near the end of the traffic, only those with orders waiting then
        # can move, and only they are watched. A partition recovers when an order that was not in the database
        # when the fault was marked (sampled at once) reaches it: one stored before the fault does not count.
        if kind == "sigkill":
            victim = rng.choice(live())
            held = {int(p.split("[")[1].rstrip("]")) for p in victim.assignment() if p.startswith(f"{order_topic}[")}
            victim.kill()
            at = time.monotonic()
            workers.remove(victim)
            time.sleep(0.5)  # a commit the victim had sent before it died is in the database by now
            marked, waiting = progress.mark()
            watched = held if flowing(marked) else held & waiting
            workers.append(start_worker())
        else:
            if kind == "postgres_immediate_restart":
                postgres.stop("immediate")
                time.sleep(1.0)
                postgres.start()
            elif kind == "broker_kill9_restart":
                broker.kill()
                time.sleep(2.0)
                broker.start()
            elif kind == "add_worker":
                workers.append(start_worker())
            elif kind == "remove_worker":
                leaving = rng.choice(live())
                workers.remove(leaving)
                assert leaving.terminate(timeout_s=90) == 0, f"{leaving.log_path.name} did not stop cleanly"
            at = time.monotonic()
            marked, waiting = progress.mark()
            watched = set(range(PARTITIONS)) if flowing(marked) else waiting
        fault = Fault(kind, at - started, len(watched))
        faults.append(fault)
        if not watched:
            return  # nothing waited: nothing to time
        deadline = time.monotonic() + RECOVERY_BOUND_S
        while time.monotonic() < deadline:
            fault.recovery_s = progress.recovery_s(marked, watched, origin=at)
            if fault.recovery_s is not None:
                break
            time.sleep(0.25)

    sender = threading.Thread(target=produce_all, daemon=True)
    try:
        workers.extend(start_worker() for _ in range(2))
        with Sampler(progress.sample, every_s=0.25):
            sender.start()
            time.sleep(8.0)  # the group settles and traffic flows before the first fault
            for w in workers:  # the default, `auto`, takes KIP-848 on this broker
                assert [e["protocol"] for e in w.logged("group_protocol_chosen")] == ["consumer"], w.log_path.name
            # Each kind once, the first four while orders flow; then SIGKILLs until the traffic is sent (bounded count).
            schedule = [
                "sigkill",
                "postgres_immediate_restart",
                "broker_kill9_restart",
                "sigkill",
                "add_worker",
                "remove_worker",
            ]
            for n in range(200):
                if n >= len(schedule) and sending_done.is_set():
                    break
                inject(schedule[n] if n < len(schedule) else "sigkill")
                time.sleep(rng.uniform(2.0, 5.0))
            sender.join(timeout=600)
            assert sending_done.is_set(), "the traffic was not all delivered"

            topics = [world.topics[k] for k in ("order-created", "inventory-received", "order-cancelled")]
            wait_for("the group's lag to reach 0", lambda: group_lag(world.bootstrap, world.group_id, topics) == 0, 600)

            def outbox_empty() -> bool:
                return bool(world.query("SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0] == 0)

            wait_for("the outbox to empty", outbox_empty, 300)
        drained_s = time.monotonic() - started
        assert live(), "no worker left"
        assert not exits, f"workers exited on their own: {exits}"

        outcome = check_outcomes(world, plan, codec)
        # Receipts given in steps through their plans, some resumed by another worker; none left.
        planned = sum(len(w.logged("receipt_planned")) for w in every_worker)
        resumed = sum(len(w.logged("receipt_resumed")) for w in every_worker)
        assert planned > 0, "no receipt was given in steps"
        assert world.query("SELECT count(*) FROM receipt_plan") == [(0,)], "a receipt's plan left behind"
    finally:
        world.close()

    kills = [f.recovery_s for f in faults if f.kind == "sigkill" and f.recovery_s is not None]
    timed = [f for f in faults if f.watched_partitions]
    lines = [
        f"fault run ({'soak' if SOAK else 'short'}): {len(plan.events)} inbound events "
        f"({len(plan.orders)} orders, {len(plan.receipts)} receipts, {len(plan.cancellations)} cancellations) "
        f"over {SKUS} SKUs; drained after {drained_s:.0f}s; load {loadavg()}",
        f"faults injected: {len(faults)} {dict(Counter(f.kind for f in faults))}",
    ]
    for f in faults:
        recovered = "NOT recovered" if f.recovery_s is None else f"progress after {f.recovery_s:.1f}s"
        if not f.watched_partitions:
            recovered = "nothing waiting, not timed"
        lines.append(f"  t={f.at_s:6.1f}s {f.kind:28s} {f.watched_partitions} partitions watched, {recovered}")
    if kills:
        lines.append(
            f"SIGKILL recovery: median {statistics.median(kills):.1f}s, max {max(kills):.1f}s over {len(kills)}"
        )
    lines.append(
        f"outbound: {outcome['outbound']} messages, {outcome['duplicates']} duplicates by event_id "
        f"({outcome['conflicts']} with different content); units received {outcome['received']}, "
        f"allocated {outcome['allocated']}, reserved {outcome['reserved']}, available {outcome['available']}"
    )
    lines.append(f"receipts given in steps through a plan: {planned} (resumed by the receipt again: {resumed})")
    figures(*lines)

    assert all(f.recovery_s is not None for f in timed), "a fault after which a partition never moved again"
    assert kills, "no SIGKILL recovery measured"
    assert statistics.median(kills) <= KILL_RECOVERY_MEDIAN_S, (
        f"a SIGKILLed worker's partitions took {statistics.median(kills):.1f}s (median) to move again"
    )


def check_outcomes(world: Deployment, plan: Plan, codec: AvroCodec) -> dict[str, int]:
    """The issue's invariants, on the database and on every outbound topic; the figures for the summary."""
    # Every inbound event has its outcome.
    orders = {r[0] for r in world.query("SELECT order_id FROM customer_order")}
    assert sorted(set(plan.orders) - orders)[:5] == [], "orders lost"
    lines = {
        (o, line): (sku, qty, alloc, reserved, cancelled, rejected, status, split)
        for o, line, sku, qty, alloc, reserved, cancelled, rejected, status, split in world.query(
            """SELECT order_id, line_id, sku, quantity, quantity_allocated, quantity_reserved, quantity_cancelled,
                      quantity_rejected, status, split FROM order_line"""
        )
    }
    for order_id, record in plan.orders.items():
        for line in record["lines"]:
            got = lines.get((order_id, line["line_id"]))
            assert got is not None and got[:2] == (line["sku"], line["quantity"]), (order_id, line, got)
    receipts = dict(world.query("SELECT receipt_id, quantity FROM stock_receipt"))
    assert receipts == {rid: r["quantity"] for rid, r in plan.receipts.items()}, "receipts lost or changed"
    facts = {r[0] for r in world.query("SELECT natural_key FROM inbound_fact")}
    assert sorted(set(plan.cancellations) - facts)[:5] == [], "cancellations without an outcome"
    for cancel in plan.cancellations.values():
        named = cancel["line_ids"] or [line["line_id"] for line in plan.orders[cancel["order_id"]]["lines"]]
        for line_id in named:
            _, qty, alloc, _, cancelled, _, status, _ = lines[(cancel["order_id"], line_id)]
            # Cancelled, or had every unit on its way before the cancellation came.
            assert status == "CANCELLED" or alloc == qty, (cancel["order_id"], line_id, status, alloc, cancelled)

    # Per SKU: no unit given twice; nothing received lost.
    stock = {
        sku: (available, received, promised)  # promised: by a receipt's plan, none once drained
        for sku, available, promised, received in world.query(
            "SELECT sku, available, promised, received_total FROM stock_level"
        )
    }
    allocated: Counter[str] = Counter()
    reserved: Counter[str] = Counter()
    waiting_now: Counter[str] = Counter()
    for (order_id, line_id), (sku, qty, alloc, res, cancelled, rejected, status, split) in lines.items():
        assert alloc + res + cancelled + rejected <= qty, f"{order_id}/{line_id} given beyond its quantity"
        allocated[sku] += alloc
        reserved[sku] += res
        waits = qty - alloc - res - cancelled - rejected
        if split == "SHIP_AVAILABLE_NOW" and waits > 0 and status not in ("CANCELLED", "REJECTED"):
            waiting_now[sku] += waits
        if sku in plan.oversupplied and status != "CANCELLED":
            assert alloc == qty, f"{order_id}/{line_id} of oversupplied {sku} not filled: {status} {alloc}/{qty}"
    for sku, received in plan.received.items():
        available, received_total, promised = stock[sku]
        assert received_total == received, f"{sku}: {received_total} received recorded, {received} sent"
        assert allocated[sku] + reserved[sku] <= received, f"{sku} oversold"
        assert promised == 0, f"{sku}: {promised} units still promised by a receipt's plan"
        assert available + allocated[sku] + reserved[sku] == received, f"{sku}: units appeared or vanished"
        assert not (available > 0 and waiting_now[sku] > 0), f"{sku}: {available} available, {waiting_now[sku]} wait"

    # Outbound: each event_id once, or again with the same content; shipments match the allocations.
    outbound = []
    for kind in ("fulfillment-requested", "customer-notification", "backorder-status"):
        outbound += read_topic(world.bootstrap, world.topics[kind], settle_s=5.0)
    by_id: dict[str, set[bytes]] = defaultdict(set)
    copies: Counter[str] = Counter()
    shipped: Counter[str] = Counter()
    shipped_line: Counter[tuple[str, str]] = Counter()
    status_lines: set[tuple[str, str]] = set()
    for message in outbound:
        assert message.value is not None
        _, decoded = codec.decode(message.value)
        record = dict(decoded)
        event_id = str(record["event_id"])
        copies[event_id] += 1
        by_id[event_id].add(message.value)
        if copies[event_id] > 1:
            continue
        if message.topic == world.topics["fulfillment-requested"]:
            for line in record["lines"]:
                shipped[line["sku"]] += line["quantity"]
                shipped_line[(record["order_id"], line["line_id"])] += line["quantity"]
        elif message.topic == world.topics["backorder-status"]:
            status_lines.add((record["order_id"], record["line_id"]))
    conflicts = sum(1 for contents in by_id.values() if len(contents) > 1)
    assert conflicts == 0, f"{conflicts} event_ids published with different content"
    for key, units in shipped_line.items():
        assert units <= lines[key][1], f"{key}: {units} units requested for shipment, {lines[key][1]} ordered"
    assert dict(shipped) == {sku: n for sku, n in allocated.items() if n}, "shipments differ from allocations"
    missing_status = [(o, line["line_id"]) for o, r in plan.orders.items() for line in r["lines"]]
    assert [k for k in missing_status if k not in status_lines][:5] == [], "lines without a status event"

    assert world.query("SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0] == 0
    kept, counted = world.totals_and_aggregates()
    assert kept == counted, "the running totals behind /metrics differ from the lines they count"
    dead = read_topic(world.bootstrap, world.topics["dlq"], keep_values=False, settle_s=2.0)
    classes = Counter(b"".join(m.header_values("dlq.error.class")).decode() for m in dead)
    assert not dead, f"dead letters for valid input: {dict(classes)}"
    return {
        "outbound": len(outbound),
        "duplicates": sum(1 for n in copies.values() if n > 1),
        "conflicts": conflicts,
        "received": sum(plan.received.values()),
        "allocated": sum(allocated.values()),
        "reserved": sum(reserved.values()),
        "available": sum(stock[sku][0] for sku in plan.received),
    }
