"""A relay thread killed by an unexpected exception turns /healthz unhealthy, and the worker exits with code 3.

The exception is injected by starting the worker through a wrapper that replaces the relay's
`publish_once` with one that raises once a trigger file exists: the real worker, Kafka and PostgreSQL
otherwise, and no code path in the worker that exists for the test.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import localstack

from tests import factories
from tests.integration.conftest import ROOT, Deployment, wait_for

WRAPPER = """
import os, pathlib, sys
from worker.adapters.relay import OutboxRelay
from worker.entrypoints.cli import main

trigger = pathlib.Path(os.environ["TEST_RELAY_FAILS_AFTER"])
publish_once = OutboxRelay.publish_once

def failing_publish_once(self):
    if trigger.exists():
        raise RuntimeError("injected: a bug in the relay")
    return publish_once(self)

OutboxRelay.publish_once = failing_publish_once
sys.exit(main(["run"]))
"""
SHUTDOWN_S = 10.0


def health(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:  # not listening (yet, or any more)
        return 0, ""


def unhealthy(port: int) -> str | None:
    status, body = health(port)
    return body if status == 503 else None


def test_a_dead_relay_makes_the_worker_unhealthy_and_exit_non_zero(deployment: Deployment, tmp_path: Path) -> None:
    trigger = tmp_path / "relay-fails"
    port = localstack.free_port()
    env = deployment.env(
        BACKORDER_METRICS_PORT=str(port),
        BACKORDER_SHUTDOWN_TIMEOUT_SECONDS=str(SHUTDOWN_S),
        TEST_RELAY_FAILS_AFTER=str(trigger),
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deployment.produce("order-created", factories.order("SV-1", "2026-04-01", [("SV-SKU", 2)]))
            wait_for("the worker to be healthy", lambda: health(port)[0] == 200, timeout_s=60)
            wait_for("the first events to be published", lambda: deployment.read("backorder-status", count=1))

            trigger.touch()
            failed_at = time.monotonic()
            deployment.produce("order-created", factories.order("SV-2", "2026-04-01", [("SV-SKU", 2)]))
            body: str = wait_for("/healthz to fail", lambda: unhealthy(port), every_s=0.05)
            unhealthy_after = time.monotonic() - failed_at
            code = proc.wait(timeout=SHUTDOWN_S + 30)
            exited_after = time.monotonic() - failed_at
        finally:
            if proc.poll() is None:
                proc.kill()
    print(f"\nrelay killed: /healthz 503 after {unhealthy_after:.2f}s ({body.strip()!r})")
    print(f"worker exited {code} after {exited_after:.1f}s")
    assert "outbox-relay died (RuntimeError: injected: a bug in the relay)" in body
    assert unhealthy_after < 5.0  # the relay comes round every 0.2 s; the failure shows at once
    assert code == 3
    assert exited_after < 2.0 + SHUTDOWN_S
    assert '"worker_unhealthy"' in log_path.read_text()
