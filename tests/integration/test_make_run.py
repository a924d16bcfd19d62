"""`make run` from nothing: its own Kafka and PostgreSQL, the demo's stories as the services around the worker
see them (the events on the output topics), the printed report, /metrics, and a clean Ctrl-C."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import localstack
from confluent_kafka import Consumer, TopicPartition

from tests.integration.conftest import ROOT, json_lines, wait_for
from worker.adapters.avro import AvroCodec


def stack_processes() -> dict[int, list[str]]:
    """Processes of any local stack (their command lines name a backorder-stack-* folder): pid -> arguments."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"backorder-stack-" in cmdline:
                found[int(proc.name)] = cmdline.decode(errors="replace").split("\0")
    return found


def own_stack(processes: dict[int, list[str]], postgres_port: str) -> set[int]:
    """The processes of the stack whose PostgreSQL listens on the port: other tests may run stacks meanwhile."""
    [postgres] = [args for args in processes.values() if "-p" in args and args[args.index("-p") + 1] == postgres_port]
    folder = next(re.search(r"backorder-stack-\w+", arg) for arg in postgres if "backorder-stack-" in arg)
    assert folder is not None
    return {pid for pid, args in processes.items() if any(folder[0] in arg for arg in args)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def published(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every event on an output topic of the demo's Kafka, decoded (the demo waited for each step's answer)."""
    codec = AvroCodec.from_directory()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "make-run-test", "enable.auto.commit": False})
    try:
        ends = {}
        for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, partition, 0) for partition in ends])
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            events.append(dict(codec.decode(msg.value())[1]))
            if (msg.offset() or 0) + 1 >= ends[msg.partition() or 0]:
                del ends[msg.partition() or 0]
        assert not ends, f"{topic}: partitions {sorted(ends)} not read to their end"
        return events
    finally:
        consumer.close()


def story_outcomes(bootstrap: str) -> None:
    """What the shipping service, the customers and the OMS saw of the demo's five stories."""
    today = dt.datetime.now(dt.UTC).date()

    def number(event: dict[str, Any]) -> str:
        return str(event["order_id"]).rsplit("-", 1)[1]  # the demo's order ids are demo-<run>-<number>

    shipments = Counter(
        (number(e), line["sku"], line["quantity"])
        for e in published(bootstrap, "fulfillment-requested")
        for line in e["lines"]
    )
    assert shipments == Counter(
        {
            ("100", "WIDGET-PRO-BLUE", 20): 1,  # first in, first out
            ("101", "WIDGET-PRO-BLUE", 20): 1,
            ("102", "WIDGET-PRO-BLUE", 10): 2,  # 10 of the first receipt, 10 of the second
            ("103", "GADGET-MINI", 2): 1,  # in stock: shipped at once
            ("201", "LAMP-ARC", 3): 1,  # the VIP order, placed last; the older standard 200 still waits
            ("300", "DESK-OAK", 4): 1,  # ship complete: one shipment of all 4, none of the 2 held first
            ("401", "CHAIR-MESH", 3): 1,  # the units the cancelled 400 held
        }
    )

    notices: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in published(bootstrap, "customer-notification"):
        notices.setdefault((number(e), e["type"]), []).append(e)
    # The expected restock gives both LAMP-ARC customers their date: after the purchase order's (in 10 days).
    dates = {order: notices[(order, "BACKORDER_ETA_CHANGED")][-1]["expected_ship_date"] for order in ("200", "201")}
    assert dates["200"] == dates["201"] and dates["200"] >= today + dt.timedelta(days=10), dates
    assert ("400", "BACKORDER_CANCELLED") in notices and ("401", "BACKORDER_ALLOCATED") in notices
    assert ("400", "BACKORDER_ALLOCATED") not in notices

    statuses = published(bootstrap, "backorder-status")
    held = [e for e in statuses if number(e) == "300" and e["quantity_allocated"] + e.get("quantity_reserved", 0) == 2]
    assert held and held[0]["quantity_backordered"] == 2, "order 300 held the first 2 DESK-OAK before shipping"
    assert [e["status"] for e in statuses if number(e) == "400"][-1] == "CANCELLED"


def test_make_run_plays_the_demo_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    before = stack_processes()
    port = localstack.free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL") and not k.startswith("BACKORDER_")
    }
    env |= {"BACKORDER_METRICS_PORT": str(port), "BACKORDER_LOG_FORMAT": "json"}
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        demo = subprocess.Popen(
            [sys.executable, "deploy/demo.py"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for("the demo scenario", lambda: "demo scenario played" in log_path.read_text(), timeout_s=180)
            shown = log_path.read_text()
            database = re.search(r"export DATABASE_URL=postgresql://\S+:(\d+)/", shown)
            assert database is not None, "the demo says where its database is"
            started = own_stack(stack_processes(), database[1])
            assert len(started) >= 2 and not started & set(before), "a Kafka broker and a PostgreSQL of its own"
            bootstrap = re.search(r"demo: Kafka at (\S+)", shown)
            assert bootstrap is not None
            story_outcomes(bootstrap[1])

            def metrics() -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    return str(response.read().decode())

            # The demo has the backlog figures read every 2 s (BACKORDER_STATE_REFRESH_SECONDS).
            wait_for("the open units in /metrics", lambda: "backorder_open_units 3.0" in metrics(), timeout_s=20)
            assert "backorder_units_received_total 75.0" in metrics()
            demo.send_signal(signal.SIGINT)  # what Ctrl-C sends
            assert demo.wait(timeout=90) == 0
        finally:
            if demo.poll() is None:  # stop it the way a person would, so it takes its stack down
                demo.send_signal(signal.SIGINT)
                try:
                    demo.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    demo.kill()
    text = log_path.read_text()
    allocations = [e for e in json_lines(text) if e.get("event") == "allocated"]
    assert {e["units"] for e in allocations if e["sku"] == "WIDGET-PRO-BLUE"} == {50, 10}
    # The report, as printed: the VIP story leaves the older standard order waiting for the expected restock.
    assert "current backorders: 1 orders, 1 lines, 3 units" in text
    assert re.search(r"^LAMP-ARC +1 +1 +3 +149\.97 USD +3d +0 +0 +6 on \d{4}-\d\d-\d\d$", text, re.MULTILINE), text
    # Where to look.
    assert f"http://127.0.0.1:{port}/metrics" in text
    assert "backorder-worker queue --sku LAMP-ARC" in text and "backorder-worker decisions --order demo-" in text
    assert "worker_stopped" in text and "demo: stopped" in text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in started):
        time.sleep(0.2)
    assert not [pid for pid in started if alive(pid)], "the demo left processes running"
