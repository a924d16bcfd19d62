"""`make run` from nothing: its own Kafka and PostgreSQL, the demo, the log and /metrics, and a clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import localstack

from tests.integration.conftest import ROOT, json_lines, wait_for


def stack_processes() -> set[int]:
    """Processes of any local stack (their command lines name a backorder-stack-* folder)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"backorder-stack-" in (proc / "cmdline").read_bytes():
                    found.add(int(proc.name))
            except OSError:
                continue
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


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
            started = stack_processes() - before
            assert len(started) >= 2, "expected a Kafka broker and a PostgreSQL server of the demo's own"
            import urllib.request

            def metrics() -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    return str(response.read().decode())

            # Figures from the database are refreshed every BACKORDER_STATE_REFRESH_SECONDS (15 s).
            wait_for(
                "the allocated units in /metrics",
                lambda: "backorder_units_allocated_total 62.0" in metrics(),
                timeout_s=40,
            )
            assert "backorder_open_units 0.0" in metrics()
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
    assert "worker_stopped" in text and "demo: stopped" in text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in started):
        time.sleep(0.2)
    assert not [pid for pid in started if alive(pid)], "the demo left processes running"
